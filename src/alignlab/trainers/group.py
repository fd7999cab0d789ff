"""RLOO, GRPO and its successors (Dr. GRPO, DAPO, GSPO): k responses per prompt, the group as the baseline, no value model.

All sample ``group_size`` responses for each of ``train.batch_size`` prompts (rows stored
``[prompt0 × k, prompt1 × k, ...]``) through the same rollout code as PPO (``trainers.rl``) and
differ in two places, each a small function picked from a dict:

* **targets** — RLOO (Ahmadian et al. 2024): the KL penalty goes into the reward,
  ``r_i = s_i − β Σ_t kl_t``, and ``A_i = r_i − mean_{j≠i} r_j``. GRPO (Shao et al. 2024), DAPO,
  GSPO: ``A_i = (s_i − mean(s)) / std(s)`` per group; Dr. GRPO (Liu et al. 2025): ``s_i − mean(s)``.
  DAPO also drops groups whose scores are all equal (dynamic sampling) and can add its soft
  overlong penalty to the scores.
* **loss** — RLOO ``reinforce``: ``−ρ_i A_i Σ_t log π(y_t)`` with the detached sequence ratio
  ρ_i = exp(Σ log π − Σ log π_old) (1 on the first minibatch; it corrects the later ones, sampled
  from an older policy); RLOO ``clip``: ``−min(ρA, clip(ρ, 1±ε)A)`` with the same sequence-level
  ρ, so at ρ = 1 the gradient is A·Σ_t ∇log π. GRPO: clipped token ratio + β·k3 KL in the loss;
  DAPO: clip (ε_low, ε_high), token-level mean over the minibatch; GSPO: sequence ratio
  exp(mean_t log π/π_old) clipped at sequence level; see ``losses.ppo``.
"""

from __future__ import annotations

import torch

from alignlab.losses.advantages import GROUP_ADVANTAGES, dapo_keep_groups, overlong_penalty
from alignlab.losses.kl import kl_estimate, kl_loss_term
from alignlab.losses.ppo import dapo_loss, grpo_loss, gspo_loss, reinforce_loss, rloo_loss
from alignlab.losses.reduce import masked_mean
from alignlab.rollout.experience import Experience
from alignlab.rollout.passes import sequence_kl
from alignlab.trainers.rl import RLAlgorithm, RLContext, run_rl_stage, sample_and_score


# ----------------------------------------------------------------------------- targets: exp -> advantages (B,)
def rloo_targets(exp: Experience, cfg) -> dict:
    seq_kl = sequence_kl(exp, cfg.kl_estimator)  # (B,)
    exp.rewards = exp.scores - cfg.beta * seq_kl  # (B,)
    exp.advantages = GROUP_ADVANTAGES["rloo"](exp.rewards, cfg.group_size)  # (B,)
    return {"kl": float(seq_kl.mean()), "beta": cfg.beta, "reward": float(exp.rewards.mean())}


def grpo_targets(exp: Experience, cfg) -> dict:
    """Group-normalised advantages; DAPO's overlong shaping and dynamic sampling (it returns the kept rows)."""
    h = cfg.hyperparameters()
    scores = exp.scores
    stats: dict = {}
    if cfg.overlong_cache:
        scores = scores + overlong_penalty(exp.response_lengths, cfg.rollout.max_new_tokens, cfg.overlong_cache)
    exp.rewards = scores  # (B,): the KL is in the loss
    exp.advantages = GROUP_ADVANTAGES["dr_grpo" if cfg.loss == "dr_grpo" else "grpo"](scores, cfg.group_size)  # (B,)
    stats.update({"kl": float(sequence_kl(exp, "k3").mean()), "beta": h["beta"], "reward": float(scores.mean())})
    if h["dynamic_sampling"]:
        keep = dapo_keep_groups(scores, cfg.group_size)  # (B,) bool
        stats["groups_kept"] = float(keep.view(-1, cfg.group_size)[:, 0].float().mean())
        exp.keep = keep
    return stats


# ----------------------------------------------------------------------------- losses: (logprobs, mb) -> (loss, stats)
def _rloo_reinforce(logprobs, mb, mask, cfg):
    old = mb.old_logprobs.to(logprobs.device)
    loss, stats = reinforce_loss(logprobs, mb.advantages.to(logprobs.device), mask, old_logprobs=old)
    with torch.no_grad():  # how far the update moved π from the sampling policy (k3, per token)
        stats["policy/approx_kl"] = masked_mean(kl_estimate(old, logprobs.detach(), "k3"), mask)
    return loss, stats


def _rloo_clip(logprobs, mb, mask, cfg):
    d = logprobs.device
    return rloo_loss(logprobs, mb.old_logprobs.to(d), mb.advantages.to(d), mask, cfg.cliprange)


def _with_kl(loss, stats, logprobs, mb, mask, beta):
    """Add β·k2 (the estimator whose gradient is ∇KL(π‖π_ref)) for the losses that have no KL term of their own."""
    if not beta:
        return loss, stats
    kl, kstats = kl_loss_term(logprobs, mb.ref_logprobs.to(logprobs.device), mask)
    return loss + beta * kl, {**stats, **kstats}


def _grpo(logprobs, mb, mask, cfg):
    d, h = logprobs.device, cfg.hyperparameters()
    if cfg.loss in ("grpo", "dr_grpo"):
        return grpo_loss(
            logprobs,
            mb.old_logprobs.to(d),
            mb.ref_logprobs.to(d),
            mb.advantages.to(d),
            mask,
            h["cliprange"],
            h["beta"],
            cfg.loss,
            max_len=cfg.rollout.max_new_tokens,
        )
    fn = {"dapo": dapo_loss, "gspo": gspo_loss}[cfg.loss]
    loss, stats = fn(
        logprobs, mb.old_logprobs.to(d), mb.advantages.to(d), mask, h["cliprange_low"], h["cliprange_high"]
    )
    return _with_kl(loss, stats, logprobs, mb, mask, h["beta"])


RLOO_LOSSES = {"reinforce": _rloo_reinforce, "clip": _rloo_clip}
GROUP_LOSSES = {"grpo": _grpo, "dr_grpo": _grpo, "dapo": _grpo, "gspo": _grpo}  # the GRPO stage's `loss` names


def on_policy(cfg) -> bool:
    """One epoch over one minibatch that holds the whole rollout: the update's log-probs *are* π_old's,
    so the rollout's pass doubles as the training forward and backward (one process; with several,
    each process trains on other rows than it sampled)."""
    from alignlab import distributed

    rows = cfg.train.batch_size * cfg.group_size
    return cfg.ppo_epochs == 1 and cfg.mini_batch_size >= rows and not distributed.active()


def onpolicy_backward(cfg, targets, loss_fn):
    """``rollout_pass``'s ``backward`` for an on-policy update of this stage (see :func:`on_policy`)."""

    def backward(exp: Experience, rows: slice, logprobs: torch.Tensor) -> None:
        """The on-policy update's gradient through the log-probs ``(n, R)`` of ``exp``'s rows ``rows``.

        The loss is the whole rollout's (its normalisers count every kept row), evaluated with these
        rows' log-probs and the others' held constant, so its gradient is these rows' share of the
        whole loss's: every loss here is a sum of per-row terms over a fixed normaliser. The rows
        are whole groups, so their advantages are exact even before the later rows' log-probs exist
        (RLOO's reward holds the group's own KL)."""
        exp = exp.select(torch.arange(len(exp)))  # (targets write into it)
        lp = exp.old_logprobs.to(logprobs.device).index_put((torch.arange(rows.start, rows.stop),), logprobs)
        targets(exp, cfg)
        if exp.keep is not None:
            kept = torch.nonzero(exp.keep).flatten()
            exp, lp = exp.select(kept), lp[kept]
            if not len(exp):
                return
        loss, _ = loss_fn(lp, exp, exp.response_mask.to(lp.device), cfg)
        if torch.isfinite(loss):  # (a non-finite update is skipped whole: the final loss says so)
            loss.backward()

    return backward


def build_group(ctx: RLContext, targets, loss_fn) -> RLAlgorithm:
    cfg = ctx.cfg
    backward = onpolicy_backward(cfg, targets, loss_fn)

    def make_experience(records, prompt_ids):
        exp, stats = sample_and_score(
            ctx, records, prompt_ids, k=cfg.group_size, with_values=False, backward=backward if on_policy(cfg) else None
        )
        stats.update(targets(exp, cfg))
        if exp.keep is not None:  # dynamic sampling: train only on the groups that carry a signal
            exp = exp.select(torch.nonzero(exp.keep).flatten())
        return exp, stats

    def loss(mb: Experience):
        if mb.backpropagated:  # on-policy: the gradient is in; the loss and its stats at π = π_old
            with torch.no_grad():
                return loss_fn(mb.old_logprobs, mb, mb.response_mask, cfg)
        logprobs, _, _ = ctx.policy_forward(mb, temperature=cfg.rollout.temperature, with_values=False)
        return loss_fn(logprobs, mb, mb.response_mask.to(logprobs.device), cfg)

    return RLAlgorithm(make_experience, loss)


def train_rloo(cfg, *, stop_after: int | None = None) -> dict:
    """Train the RLOO stage (:class:`~alignlab.config.RLOOConfig`) into ``<output_dir>/<run_name>/rloo``."""
    return run_rl_stage(
        cfg, "rloo", lambda ctx: build_group(ctx, rloo_targets, RLOO_LOSSES[cfg.loss]), stop_after=stop_after
    )


def train_grpo(cfg, *, stop_after: int | None = None) -> dict:
    """Train the GRPO stage (:class:`~alignlab.config.GRPOConfig`: grpo, dr_grpo, dapo, gspo) into ``<output_dir>/<run_name>/grpo``."""
    return run_rl_stage(
        cfg, "grpo", lambda ctx: build_group(ctx, grpo_targets, GROUP_LOSSES[cfg.loss]), stop_after=stop_after
    )
