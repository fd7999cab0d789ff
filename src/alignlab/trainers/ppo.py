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

from alignlab.losses.advantages import gae, reinforce_pp_advantages, whiten_advantages
from alignlab.losses.kl import kl_loss_term, make_kl_controller, reward_with_kl
from alignlab.losses.ppo import entropy_bonus, explained_variance, ppo_policy_loss, ppo_value_loss
from alignlab.losses.reduce import masked_sum
from alignlab.models.logprobs import trunk_and_head
from alignlab.rollout.experience import Experience
from alignlab.rollout.passes import sequence_kl
from alignlab.rollout.rewards import RunningMoments
from alignlab.trainers.rl import RLAlgorithm, RLContext, run_rl_stage, sample_and_score


def kl_controller(cfg):
    if cfg.kl_controller == "adaptive":
        return make_kl_controller("adaptive", init_beta=cfg.beta, target=cfg.kl_target, horizon=cfg.kl_horizon)
    return make_kl_controller("fixed", beta=cfg.beta)


def ppo_targets(exp: Experience, scores: torch.Tensor, *, beta: float, cfg) -> dict:
    """Fill ``exp.rewards``, ``exp.advantages`` and ``exp.returns`` from (normalised) ``scores`` (B,); returns stats.

    ``kl_penalty=loss`` puts no KL into the rewards (β = 0 here; the loss adds β·k2).
    ``advantage_estimator=reinforce_pp``: REINFORCE++'s returns-to-go normalised over the whole
    rollout's valid tokens, no value function (``exp.values`` is None).
    """
    mask = exp.response_mask  # (B, R)
    beta_r = beta if cfg.kl_penalty == "reward" else 0.0
    rewards, _ = reward_with_kl(scores, exp.old_logprobs, exp.ref_logprobs, mask, beta_r, cfg.kl_estimator)  # (B, R)
    stats = {"reward": float(masked_sum(rewards, mask, dim=-1).mean())}  # per response: score − β Σ_t kl_t
    if cfg.advantage_estimator == "reinforce_pp":
        advantages, returns = reinforce_pp_advantages(
            scores, exp.old_logprobs, exp.ref_logprobs, mask, beta_r, cfg.kl_estimator, cfg.gamma
        )
    else:
        advantages, returns = gae(rewards, exp.values, mask, cfg.gamma, cfg.gae_lambda)  # (B, R) each
        if cfg.whiten_advantages:
            advantages = whiten_advantages(advantages, mask)
        stats["value/explained_variance"] = float(explained_variance(exp.values, returns, mask))
    exp.rewards, exp.advantages, exp.returns = rewards, advantages, returns
    stats["returns"] = float((returns * mask).sum() / mask.sum())
    return stats


def build_ppo(ctx: RLContext) -> RLAlgorithm:
    cfg = ctx.cfg
    controller = kl_controller(cfg)
    moments = RunningMoments()
    temperature = cfg.rollout.temperature
    with_values = cfg.advantage_estimator == "gae"

    def make_experience(records, prompt_ids):
        exp, stats = sample_and_score(ctx, records, prompt_ids, k=1, with_values=with_values)
        scores = exp.scores
        if cfg.whiten_rewards and len(scores) > 1:
            scores = (scores - scores.mean()) / (scores.std() + 1e-8)
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
        logprobs, values, h = ctx.policy_forward(mb, temperature=temperature, with_values=with_values)
        device = logprobs.device
        mask = mb.response_mask.to(device)
        total, stats = ppo_policy_loss(
            logprobs, mb.old_logprobs.to(device), mb.advantages.to(device), mask, cfg.cliprange, cfg.policy_reduction
        )
        if with_values:
            value_loss, vstats = ppo_value_loss(
                values, mb.values.to(device), mb.returns.to(device), mask, cfg.cliprange_value
            )
            total, stats = total + cfg.vf_coef * value_loss, {**stats, **vstats}
        if cfg.kl_penalty == "loss" and controller.beta:
            kl, kstats = kl_loss_term(logprobs, mb.ref_logprobs.to(device), mask)  # k2: its gradient is ∇KL(π‖π_ref)
            total, stats = total + controller.beta * kl, {**stats, **kstats}
        if cfg.entropy_coef:
            _, head = trunk_and_head(ctx.models.model)
            entropy, estats = entropy_bonus(
                head(h).float() / temperature, mask
            )  # (B, R, V) logits of the response positions
            total, stats = total - cfg.entropy_coef * entropy, {**stats, **estats}
        return total, stats

    def after_step(exp: Experience, stats: dict) -> dict:
        controller.update(stats["kl"], len(exp))
        return {}

    return RLAlgorithm(
        make_experience, loss, after_step, extra_state={"kl_controller": controller, "reward_norm": moments}
    )


def train_ppo(cfg, *, stop_after: int | None = None) -> dict:
    """Train the PPO stage described by a :class:`~alignlab.config.PPOConfig`; returns a summary.

    Writes ``<output_dir>/<run_name>/ppo`` (see ``trainers.run``; plus ``value.safetensors``).
    """
    value = None if cfg.value_model == "none" else cfg.value_model
    return run_rl_stage(cfg, "ppo", build_ppo, value=value, stop_after=stop_after)
