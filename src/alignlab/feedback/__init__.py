"""Feedback: where preference labels come from. Nothing is imported here, so each part loads alone.

* :mod:`~alignlab.feedback.annotator` — simulated annotators (Bradley–Terry pairs, Plackett–Luce
  rankings) driven by a gold reward from :mod:`alignlab.gold`;
* :mod:`~alignlab.feedback.judge` — an LLM judge read from answer-token probabilities, both orders;
* :mod:`~alignlab.feedback.constitutional` — critiques, revisions and AI preferences from principles;
* :mod:`~alignlab.feedback.store` — the SQLite label store; :mod:`~alignlab.feedback.terminal` —
  labelling in a terminal; :mod:`~alignlab.feedback.agreement` — Cohen's and Fleiss' κ;
* :mod:`~alignlab.feedback.sources` — one ``label()`` over all sources; :mod:`~alignlab.feedback.checks`
  — ``data check``; :mod:`~alignlab.feedback.cli` — the ``label`` and ``data`` commands.
"""
