"""``alignlab rewardbench``: reward accuracy per subset on a local RewardBench-layout file.

    alignlab rewardbench rb.jsonl --model runs/x/reward/final            a reward model (either layout)
    alignlab rewardbench rb.jsonl --model runs/x/dpo/final               a DPO policy: β and π_ref from its run
    alignlab rewardbench rb.jsonl --model pol/ --ref sft/ --beta 0.1 --out rb.json

The file's rows are ``prompt``, ``chosen`` and ``rejected`` (one string, or several for best-of-K),
with an optional ``subset`` (see :mod:`alignlab.eval.rewardbench`, which does the accuracy maths:
per-subset Wilson intervals, RewardBench's sections and their bootstrap intervals).

Scorers. A **reward model** folder scores each (prompt, response) with its normalised score. A
**policy** scores with its implicit reward ``β·(log π(y|x) − log π_ref(y|x))``, summed over the
response tokens (the response's EOS included, as DPO trains it): give ``--ref`` (π_ref) and
``--beta``, or point ``--model`` at a DPO-family stage's ``final/``, whose ``config.yaml`` gives β
(the loss's default when unset), π_ref (the model the stage started from, with its seed) and
whether the loss used mean per-token log-probs (``length_normalize``, IPO's default), which
``--length-normalize`` also sets.
Either way a response is tokenised as in training: the prompt through the chat template, then the
response and EOS. A pair longer than ``--max-length`` (default: the model's context) loses prompt
tokens from the left first (down to half the budget), then response tokens from the right; the
result counts such rows under ``truncated``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alignlab.errors import ConfigError, ModelLoadError

DEFAULT_CONTEXT = 4096  # when a model's config does not say how long its context is


# ----------------------------------------------------------------------------- tokenising
def _prompt(value):
    """A row's prompt as alignlab takes it: a string, or a tuple of messages."""
    if isinstance(value, str):
        return value
    from alignlab.data.records import Message

    return tuple(Message(str(m.get("role", "user")), str(m["content"])) for m in value)


class _Tokens:
    """(prompt, response) -> ``data.tokenize.Example`` cut to ``max_length``; counts the cuts."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length, self.truncated = tokenizer, max_length, 0

    def __call__(self, prompts, responses) -> list:
        from alignlab.data.tokenize import Example, encode_prompt, encode_response

        out = []
        for p, r in zip(prompts, responses):
            prompt_ids = encode_prompt(self.tokenizer, _prompt(p))
            response_ids = encode_response(self.tokenizer, r)
            if len(prompt_ids) + len(response_ids) > self.max_length:
                self.truncated += 1
                keep = max(self.max_length - len(response_ids), self.max_length // 2)
                prompt_ids = prompt_ids[-keep:]
                response_ids = response_ids[: self.max_length - len(prompt_ids)]
            out.append(Example(prompt_ids, response_ids))
        return out


def _context(model) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "max_position_embeddings", None) or DEFAULT_CONTEXT)


# ----------------------------------------------------------------------------- scorers
def reward_model_scorer(
    folder: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 8, max_length: int | None = None
):
    """``(score, tokens)``: a reward-model folder's normalised scores as a ``score(prompts, responses)``."""
    from alignlab.models.heads import load_reward_model, score_examples

    loaded = load_reward_model(folder, device=device, dtype=dtype)
    tokens = _Tokens(loaded.tokenizer, max_length or _context(loaded.model.backbone))

    def score(prompts, responses):
        examples = tokens(prompts, responses)
        pad = loaded.tokenizer.pad_token_id
        return score_examples(loaded.model, examples, pad, batch_size=batch_size, normalised=True).tolist()

    return score, tokens


def implicit_reward_scorer(
    policy: str,
    ref: str,
    beta: float,
    *,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 8,
    max_length: int | None = None,
    length_normalize: bool = False,
):
    """``(score, tokens)``: ``β·(seq_logps_π − seq_logps_ref)`` (sums over response tokens) per
    pair; with ``length_normalize`` (IPO's default) each sum is divided by the response's length."""
    import torch

    from alignlab.config import ModelConfig, from_dict
    from alignlab.data.collate import pad_examples
    from alignlab.models.load import load_model
    from alignlab.trainers.reference import seq_logps

    if not beta > 0:
        raise ConfigError(f"--beta must be > 0; got {beta}")

    def load(name):
        cfg = from_dict(ModelConfig, {"name_or_path": str(name), "device": device, "dtype": dtype})
        return load_model(cfg, seed=seed, for_training=False)

    pi, pi_ref = load(policy), load(ref)
    if pi.tokenizer.get_vocab() != pi_ref.tokenizer.get_vocab():
        raise ModelLoadError(
            f"--ref {ref}: its tokenizer differs from the policy's ({policy}); give π_ref of this policy"
        )
    tokens = _Tokens(pi.tokenizer, max_length or _context(pi.model))

    @torch.no_grad()
    def score(prompts, responses):
        examples = tokens(prompts, responses)
        out = []
        for start in range(0, len(examples), batch_size):
            batch = pad_examples(examples[start : start + batch_size], pi.tokenizer.pad_token_id)
            diff = seq_logps(pi.model, batch) - seq_logps(pi_ref.model, batch)  # (b,)
            if length_normalize:  # mean per-token log-ratio, as the loss was trained on
                diff = diff / batch["loss_mask"].sum(-1).clamp(min=1).to(diff)
            out += (beta * diff.double()).tolist()
        return out

    return score, tokens


def policy_defaults(folder: str | Path) -> dict | None:
    """``{beta, ref, seed, loss, length_normalize, config}`` from the config.yaml of the DPO-family stage whose
    ``final/`` is ``folder``; None when ``folder`` is not such a stage's final/."""
    from alignlab.config import DPOConfig, load_config
    from alignlab.runs import CONFIG

    folder = Path(folder)
    path = folder.parent / CONFIG
    if folder.name != "final" or not path.is_file():
        return None
    try:
        cfg = load_config(DPOConfig, str(path), [])
    except ConfigError:  # another stage's config (sft, reward, ...)
        return None
    from alignlab.losses.preference import get_preference_loss

    if not get_preference_loss(cfg.loss).needs_reference:
        raise ConfigError(
            f"{path}: loss '{cfg.loss}' has no reference model, so its policy has no implicit reward "
            "β·log π/π_ref; give --ref and --beta to score it against a reference anyway"
        )
    return {
        "beta": cfg.hyperparameters().get("beta"),
        "ref": cfg.model.name_or_path,
        "seed": cfg.train.seed,
        "loss": cfg.loss,
        "length_normalize": bool(cfg.hyperparameters().get("length_normalize")),
        "config": str(path),
    }


# ----------------------------------------------------------------------------- the command
def run_rewardbench(
    file: str,
    model: str,
    *,
    ref: str | None = None,
    beta: float | None = None,
    out: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    max_length: int | None = None,
    confidence: float = 0.95,
    length_normalize: bool | None = None,
) -> dict:
    """Score ``file`` with ``model`` (a reward model, or a policy's implicit reward); the result of
    :func:`alignlab.eval.rewardbench.accuracy` plus ``scorer`` and ``truncated``, written to ``out``
    (JSON, with each row's scores) when given."""
    from alignlab.eval import rewardbench
    from alignlab.models.heads import reward_layout

    if not 0 < confidence < 1:
        raise ConfigError(f"--confidence must be between 0 and 1; got {confidence}")
    rows = rewardbench.read_file(file)  # a bad file fails here, before any model loads
    if not Path(model).expanduser().exists() and ("/" in model or model.startswith(".")):
        raise ModelLoadError(f"--model {model}: no such folder")
    if reward_layout(Path(model).expanduser()) is not None:
        if ref is not None or beta is not None:
            raise ConfigError(
                f"--model {model} is a reward model: --ref and --beta apply to a policy's implicit reward"
            )
        score, tokens = reward_model_scorer(
            model, device=device, dtype=dtype, batch_size=batch_size, max_length=max_length
        )
        scorer = {"kind": "reward_model", "model": model}
    else:
        found = policy_defaults(model) or {}
        for key, given in (("ref", ref), ("beta", beta), ("length_normalize", length_normalize)):
            if given is None and found.get(key) is not None:
                print(f"alignlab: rewardbench: {key} = {found[key]} (from {found['config']})", file=sys.stderr)
        ref = ref if ref is not None else found.get("ref")
        beta = beta if beta is not None else found.get("beta")
        length_normalize = bool(length_normalize if length_normalize is not None else found.get("length_normalize"))
        if ref is None or beta is None:
            missing = " and ".join(k for k, v in (("--ref", ref), ("--beta", beta)) if v is None)
            raise ConfigError(
                f"--model {model} is not a reward-model folder, so it is scored as a policy by its implicit "
                f"reward β·log π/π_ref: give {missing} (or point --model at a dpo stage's final/ folder)"
            )
        score, tokens = implicit_reward_scorer(
            model,
            ref,
            float(beta),
            seed=found.get("seed", 0),
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            max_length=max_length,
            length_normalize=length_normalize,
        )
        scorer = {
            "kind": "implicit_reward",
            "model": model,
            "ref": ref,
            "beta": float(beta),
            "length_normalize": length_normalize,
        }
    result = rewardbench.accuracy(
        [r for _, r in rows], score, batch_size=batch_size * 4, confidence=confidence, keep_scores=True
    )
    for (where, row), detail in zip(rows, result["rows"]):
        detail["where"] = where
        if "id" in row:
            detail["id"] = row["id"]
    result.update(file=str(file), scorer=scorer, truncated=tokens.truncated, confidence=confidence)
    if out:
        from alignlab.runs import atomic_write_json

        atomic_write_json(out, result)
    return result


def format_table(result: dict) -> str:
    """The result as a plain-text table: subsets, sections, then the summaries."""

    def line(name, acc, n, interval):
        span = f"[{interval['lo']:.3f}, {interval['hi']:.3f}]" if interval else ""
        return f"  {name:<28} {'' if n is None else n:>6} {acc:>9.3f}  {span}"

    pct = round(100 * result.get("confidence", 0.95))
    out = [f"  {'subset':<28} {'n':>6} {'accuracy':>9}  {pct}% interval"]
    out += [line(name, s["accuracy"], s["n"], s["interval"]) for name, s in sorted(result["subsets"].items())]
    if result["sections"]:
        out.append("")
        out += [line(f"section {name}", s["accuracy"], None, s["interval"]) for name, s in result["sections"].items()]
    out.append("")
    out.append(line("overall (mean over rows)", result["overall"], result["n"], result["interval"]))
    out.append(line("macro (mean over subsets)", result["macro"], len(result["subsets"]), result["macro_interval"]))
    if result["score"] is not None:
        label = "RewardBench score (sections)"
        out.append(line(label, result["score"], None, result["score_interval"]))
        if result["sections_missing"]:
            out.append(f"  (sections not in the file: {', '.join(result['sections_missing'])})")
    if result.get("truncated"):
        out.append(f"  {result['truncated']} responses were cut to fit --max-length")
    return "\n".join(out)


def add_command(sub) -> None:
    """Register ``alignlab rewardbench`` on the CLI's subparsers."""
    p = sub.add_parser(
        "rewardbench",
        help="reward accuracy per subset on a local RewardBench-layout file (a reward model or a DPO policy)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", help="rows with prompt, chosen, rejected (string or list) and subset")
    p.add_argument("--model", required=True, help="a reward-model folder, or a policy (e.g. a dpo run's final/)")
    p.add_argument("--ref", default=None, help="π_ref for a policy's implicit reward (default: from the run's config)")
    p.add_argument("--beta", type=float, default=None, help="β of the implicit reward (default: from the run's config)")
    p.add_argument("--out", default=None, help="JSON file for the result, with each row's scores")
    p.add_argument("--batch-size", type=int, default=8, help="responses per forward pass")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--max-length", type=int, default=None, help="tokens per pair (default: the model's context)")
    p.add_argument("--confidence", type=float, default=0.95, help="level of the intervals")
    p.add_argument(
        "--length-normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a policy's log-ratio per response token instead of summed (default: the run's loss; IPO: on)",
    )


def run_command(args) -> int:
    result = run_rewardbench(
        args.file,
        args.model,
        ref=args.ref,
        beta=args.beta,
        out=args.out,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length,
        confidence=args.confidence,
        length_normalize=args.length_normalize,
    )
    print(format_table(result))
    if args.out:
        print(f"alignlab: rewardbench: wrote {args.out}", file=sys.stderr)
    return 0
