"""RLOO and GRPO: k responses per prompt, the group as the baseline, no value model.

Both sample ``group_size`` responses for each of ``train.batch_size`` prompts (rows stored
``[prompt0 × k, prompt1 × k, ...]``) through the same rollout code as PPO (``trainers.rl``) and
differ in two places, each a small function picked from a dict:

* **targets** — RLOO (Ahmadian et al. 2024): the KL penalty goes into the reward,
  ``r_i = s_i − β Σ_t kl_t``, and ``A_i = r_i − mean_{j≠i} r_j``. GRPO (Shao et al. 2024):
  ``A_i = (s_i − mean(s)) / std(s)`` per group; Dr. GRPO (Liu et al. 2025): ``s_i − mean(s)``.
* **loss** — RLOO ``reinforce``: ``−A_i Σ_t log π(y_t)``; RLOO ``clip``: PPO's clipped ratio with
  A_i on every token, per-sequence mean. GRPO: clipped ratio + β·k3 KL to π_ref in the loss, per
  sequence (grpo) or summed over tokens / (G · max_new_tokens) (dr_grpo); see ``losses.ppo``.
"""
from __future__ import annotations

import torch

from alignlab.losses.advantages import GROUP_ADVANTAGES
from alignlab.losses.kl import kl_estimate
from alignlab.losses.ppo import grpo_loss, ppo_policy_loss, reinforce_loss
from alignlab.losses.reduce import masked_mean
from alignlab.rollout.experience import Experience
from alignlab.rollout.passes import policy_forward, sequence_kl
from alignlab.trainers.rl import RLAlgorithm, RLContext, run_rl_stage, sample_and_score


# ----------------------------------------------------------------------------- targets: exp -> advantages (B,)
def rloo_targets(exp: Experience, cfg) -> dict:
    seq_kl = sequence_kl(exp, cfg.kl_estimator)  # (B,)
    exp.rewards = exp.scores - cfg.kl_coef * seq_kl  # (B,)
    exp.advantages = GROUP_ADVANTAGES["rloo"](exp.rewards, cfg.group_size)  # (B,)
    return {"kl": float(seq_kl.mean()), "beta": cfg.kl_coef, "reward": float(exp.rewards.mean())}


def grpo_targets(exp: Experience, cfg) -> dict:
    exp.rewards = exp.scores  # (B,): the KL is in the loss
    exp.advantages = GROUP_ADVANTAGES[cfg.variant](exp.scores, cfg.group_size)  # (B,)
    return {"kl": float(sequence_kl(exp, "k3").mean()), "beta": cfg.beta}


# ----------------------------------------------------------------------------- losses: (logprobs, mb) -> (loss, stats)
def _rloo_reinforce(logprobs, mb, mask, cfg):
    loss, stats = reinforce_loss(logprobs, mb.advantages.to(logprobs.device), mask)
    with torch.no_grad():  # how far the update moved π from the sampling policy (k3, per token)
        stats["policy/approx_kl"] = masked_mean(kl_estimate(mb.old_logprobs.to(logprobs.device), logprobs.detach(), "k3"), mask)
    return loss, stats


def _rloo_clip(logprobs, mb, mask, cfg):
    adv = mb.advantages.to(logprobs.device).unsqueeze(-1).expand_as(logprobs)  # (B,) -> (B, R)
    return ppo_policy_loss(logprobs, mb.old_logprobs.to(logprobs.device), adv, mask, cfg.cliprange, "sequence")


def _grpo(logprobs, mb, mask, cfg):
    d = logprobs.device
    return grpo_loss(
        logprobs, mb.old_logprobs.to(d), mb.ref_logprobs.to(d), mb.advantages.to(d), mask,
        cfg.cliprange, cfg.beta, cfg.variant, max_len=cfg.rollout.max_new_tokens,
    )


RLOO_LOSSES = {"reinforce": _rloo_reinforce, "clip": _rloo_clip}


def build_group(ctx: RLContext, targets, loss_fn) -> RLAlgorithm:
    cfg = ctx.cfg

    def make_experience(records, prompt_ids):
        exp, stats = sample_and_score(ctx, records, prompt_ids, k=cfg.group_size, with_values=False)
        stats.update(targets(exp, cfg))
        return exp, stats

    def loss(mb: Experience):
        logprobs, _, _ = policy_forward(ctx.models, mb, temperature=cfg.rollout.temperature, with_values=False)
        return loss_fn(logprobs, mb, mb.response_mask.to(logprobs.device), cfg)

    return RLAlgorithm(make_experience, loss)


def train_rloo(cfg, *, stop_after: int | None = None) -> dict:
    """Train the RLOO stage (:class:`~alignlab.config.RLOOConfig`) into ``<output_dir>/<run_name>/rloo``."""
    return run_rl_stage(cfg, "rloo", lambda ctx: build_group(ctx, rloo_targets, RLOO_LOSSES[cfg.loss]), stop_after=stop_after)


def train_grpo(cfg, *, stop_after: int | None = None) -> dict:
    """Train the GRPO / Dr. GRPO stage (:class:`~alignlab.config.GRPOConfig`) into ``<output_dir>/<run_name>/grpo``."""
    return run_rl_stage(cfg, "grpo", lambda ctx: build_group(ctx, grpo_targets, _grpo), stop_after=stop_after)
