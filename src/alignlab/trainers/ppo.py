"""PPO with a KL penalty: RL from a reward with a value function (Ziegler et al. 2019; Ouyang et al. 2022).

Per rollout (shapes: B responses, R response tokens):

    scores   s (B,)         reward source, minus the truncation penalty; then optionally
                            normalised by running moments ((s − mean) / std) and clipped to ±c
    kl_t     (B, R)         kl_estimate(log π_old, log π_ref)   (k1 / k2 / k3)
    r_t      (B, R)         −β · kl_t, plus s at the last valid response token  (losses.kl.reward_with_kl)
    A_t, R_t (B, R)         GAE(γ, λ) over r and the rollout's values; A whitened over valid tokens
    loss                    clipped policy loss + vf_coef · clipped value loss, ppo_epochs × minibatches
    β                       fixed, or the adaptive controller's update with the rollout's mean Σ_t kl_t

The value function is a head on the policy's trunk (``value_model=head``) or on a second copy of
the model (``separate``); see :mod:`alignlab.models.value`. Its trainable weights are saved in
every checkpoint (extra state) and, at the end, in ``<stage>/value.safetensors``; the policy is in
``final/`` as for every stage. The KL controller and the reward normaliser are saved in every
checkpoint, so a resumed run continues exactly.
"""
from __future__ import annotations

import torch

from alignlab.losses.advantages import gae, whiten_advantages
from alignlab.losses.kl import make_kl_controller, reward_with_kl
from alignlab.losses.ppo import explained_variance, ppo_policy_loss, ppo_value_loss
from alignlab.losses.reduce import masked_sum
from alignlab.rollout.experience import Experience
from alignlab.rollout.rewards import RunningMoments
from alignlab.rollout.passes import policy_forward, sequence_kl
from alignlab.trainers.rl import RLAlgorithm, RLContext, run_rl_stage, sample_and_score


def kl_controller(cfg):
    if cfg.kl_controller == "adaptive":
        return make_kl_controller("adaptive", init_beta=cfg.kl_coef, target=cfg.kl_target, horizon=cfg.kl_horizon)
    return make_kl_controller("fixed", beta=cfg.kl_coef)


def ppo_targets(exp: Experience, scores: torch.Tensor, *, beta: float, cfg) -> dict:
    """Fill ``exp.rewards``, ``exp.advantages`` and ``exp.returns`` from (normalised) ``scores`` (B,); returns stats."""
    mask = exp.response_mask  # (B, R)
    rewards, kl = reward_with_kl(scores, exp.old_logprobs, exp.ref_logprobs, mask, beta, cfg.kl_estimator)  # (B, R) each
    advantages, returns = gae(rewards, exp.values, mask, cfg.gamma, cfg.gae_lambda)  # (B, R) each
    if cfg.whiten_advantages:
        advantages = whiten_advantages(advantages, mask)
    exp.rewards, exp.advantages, exp.returns = rewards, advantages, returns
    return {
        "reward": float(masked_sum(rewards, mask, dim=-1).mean()),  # per response: score − β Σ_t kl_t
        "value/explained_variance": float(explained_variance(exp.values, returns, mask)),
        "returns": float((returns * mask).sum() / mask.sum()),
    }


def build_ppo(ctx: RLContext) -> RLAlgorithm:
    cfg = ctx.cfg
    controller = kl_controller(cfg)
    moments = RunningMoments()
    temperature = cfg.rollout.temperature

    def make_experience(records, prompt_ids):
        exp, stats = sample_and_score(ctx, records, prompt_ids, k=1, with_values=True)
        scores = exp.scores
        if cfg.reward_norm:
            moments.update(scores)
            scores = moments.normalize(scores)
        if cfg.reward_clip > 0:
            scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
        stats["beta"] = controller.beta
        stats["kl"] = float(sequence_kl(exp, cfg.kl_estimator).mean())  # per response, summed over tokens
        stats.update(ppo_targets(exp, scores, beta=controller.beta, cfg=cfg))
        return exp, stats

    def loss(mb: Experience):
        logprobs, values, _ = policy_forward(ctx.models, mb, temperature=temperature, with_values=True)
        device = logprobs.device
        mask = mb.response_mask.to(device)
        policy_loss, pstats = ppo_policy_loss(
            logprobs, mb.old_logprobs.to(device), mb.advantages.to(device), mask, cfg.cliprange, cfg.policy_reduction
        )
        value_loss, vstats = ppo_value_loss(values, mb.values.to(device), mb.returns.to(device), mask, cfg.cliprange_value)
        return policy_loss + cfg.vf_coef * value_loss, {**pstats, **vstats}

    def after_step(exp: Experience, stats: dict) -> dict:
        controller.update(stats["kl"], len(exp))
        return {}

    return RLAlgorithm(make_experience, loss, after_step, extra_state={"kl_controller": controller, "reward_norm": moments})


def train_ppo(cfg, *, stop_after: int | None = None) -> dict:
    """Train the PPO stage described by a :class:`~alignlab.config.PPOConfig`; returns a summary.

    Writes ``<output_dir>/<run_name>/ppo`` (see ``trainers.run``; plus ``value.safetensors``).
    """
    return run_rl_stage(cfg, "ppo", build_ppo, value=cfg.value_model, stop_after=stop_after)
