"""Evaluation maths: win rates, intervals, KL, the best-of-n frontier, over-optimisation, monitors.

Pure functions of numbers and texts (numpy; torch tensors are read, never required). Generation is
the caller's; :func:`evaluate_run` takes scored sample rows and writes ``<run>/eval/eval.json``
(schema in :mod:`alignlab.eval.evaluate`).

    stats        win_rate (ties ½), wilson_interval, bootstrap_interval, mean_interval, paired_difference
    kl           response_kl, kl_summary (k1 and k3 per response)
    frontier     best_of_n_kl_curve, expected_max_of_n, best_of_n_gold, checkpoint_points
    overopt      fit_bon, fit_rl (Gao et al. 2022 forms), predict
    monitors     length_drift, repetition, diversity, entropy_collapse, proxy_gold_gap, disagreement
    probes       sycophancy (shipped false-premise items), harmlessness (HH-RLHF prompts from a path)
    rewardbench  accuracy per subset of any score(prompts, responses) callable
"""

from alignlab.eval.evaluate import evaluate_run, read_eval

__all__ = ["evaluate_run", "read_eval"]
