"""One config dataclass per stage; the pipeline table (``alignlab.pipeline``) names them."""

from __future__ import annotations

from dataclasses import dataclass

from alignlab.config.parse import knob
from alignlab.config.sections import (
    DataConfig,
    ModelConfig,
    MonitorConfig,
    RewardSourceConfig,
    RolloutConfig,
    TrainConfig,
)
from alignlab.errors import ConfigError, did_you_mean


@dataclass
class SFTConfig:
    """Supervised fine-tuning: cross-entropy on response tokens only."""

    model: ModelConfig = knob(help="the policy", factory=ModelConfig)
    data: DataConfig = knob(help="SFT records", factory=DataConfig)
    train: TrainConfig = knob(help="the training loop", factory=TrainConfig)


@dataclass
class GenerateConfig:
    """Sampling from a model (``alignlab generate``)."""

    model: ModelConfig = knob(help="the model to sample from", factory=ModelConfig)
    prompt: list[str] = knob(help="one or more user prompts", factory=list)
    max_new_tokens: int = knob(128, "tokens generated at most per response")
    temperature: float = knob(0.7, "sampling temperature (0: greedy)")
    top_p: float = knob(0.9, "nucleus sampling mass")
    seed: int = knob(0, "sampling seed")


def _preference_data() -> DataConfig:
    return DataConfig(train="demo:preferences")


def _dpo_data() -> DataConfig:
    return DataConfig(train="demo:preferences", packing=True)  # same numbers, about half the tokens


@dataclass
class RewardConfig:
    """Reward model: a scalar head on a causal LM's trunk, trained on comparisons.

    After training the scores are normalised so that the reference policy's responses (the
    backbone as loaded, sampled on ``norm_prompts`` before training) score mean 0, std 1.
    """

    model: ModelConfig = knob(help="the backbone (usually the SFT model); LoRA or full", factory=ModelConfig)
    data: DataConfig = knob(help="preference or ranking records", factory=_preference_data)
    train: TrainConfig = knob(help="the training loop", factory=TrainConfig)
    data_kind: str = knob("preference", "preference (chosen/rejected rows) or ranking (K ranked responses per prompt)")
    loss: str = knob(
        "bradley_terry", "bradley_terry (pairs; a ranking gives all its pairs), kwise or plackett_luce (whole rankings)"
    )
    margin: float = knob(0.0, "bradley_terry only: ask r_chosen - r_rejected to exceed this (reward units)")
    heads: int = knob(
        1,
        "reward heads on the trunk: K > 1 is an ensemble (each head its own init and loss; the reward is their mean, their std is logged as rm/disagreement)",
    )
    margin_from_data: bool = knob(
        False,
        "bradley_terry only: use each pair's own `margin` field (Llama 2 preference strength); pairs without one use `margin`",
    )
    magnitude_penalty: float = knob(
        0.0, "coefficient of mean(r^2) added to the loss (pins the rewards' free offset near 0)"
    )
    center_rewards: float = knob(
        0.0,
        "coefficient of mean((r_chosen + r_rejected)^2) added to the loss (centres each pair's rewards on 0; TRL suggests 0.01)",
    )
    norm_prompts: str = knob(
        "demo:prompts", "prompts whose reference-policy responses set the normalisation (mean 0, std 1)"
    )
    norm_num_prompts: int = knob(64, "prompts used for normalisation (0: no normalisation: shift 0, scale 1)")
    norm_max_new_tokens: int = knob(64, "tokens sampled at most per normalisation response")

    def check(self) -> None:
        from alignlab.losses.reward import get_reward_loss

        try:
            get_reward_loss(self.loss)
        except ConfigError as e:  # name the key, keep the did-you-mean
            raise ConfigError(f"'loss': {e}") from None
        if self.data_kind not in ("preference", "ranking"):
            raise ConfigError(f"'data_kind' must be preference or ranking for a reward model; got {self.data_kind!r}")
        if (self.margin != 0.0 or self.margin_from_data) and self.loss != "bradley_terry":
            raise ConfigError(f"'margin' and 'margin_from_data' apply to loss bradley_terry only, not '{self.loss}'")
        if self.heads < 1:
            raise ConfigError(f"'heads' must be at least 1; got {self.heads}")
        if self.heads > 1 and self.loss != "bradley_terry":
            raise ConfigError(
                f"'heads' > 1 (an ensemble) trains each head with bradley_terry; not with loss '{self.loss}'"
            )
        if self.center_rewards < 0:
            raise ConfigError(f"'center_rewards' must be >= 0; got {self.center_rewards}")
        if self.center_rewards and self.data_kind != "preference" and self.loss != "bradley_terry":
            raise ConfigError("'center_rewards' applies to pairs (bradley_terry)")
        if self.magnitude_penalty < 0:
            raise ConfigError(f"'magnitude_penalty' must be >= 0; got {self.magnitude_penalty}")
        if self.norm_num_prompts < 0 or self.norm_max_new_tokens < 1:
            raise ConfigError("'norm_num_prompts' must be >= 0 and 'norm_max_new_tokens' >= 1")
        if self.data.packing:
            raise ConfigError(
                "'data.packing' applies to sft and dpo; a reward model puts one pair per row (data.share_prompt) or one response"
            )


@dataclass
class DPOConfig:
    """Direct preference methods from preferences (the variants and their published defaults: --help).

    The reference π_ref is the model as loaded. With LoRA it is the same network with the adapter
    disabled; with full fine-tuning its log-probs are computed from the initial weights before the
    first step. Either way no second copy of the model is held, and the reference log-probs are
    computed once per data set and cached on disk. A hyperparameter left empty (null) takes the
    chosen loss's published default (``alignlab.losses.preference.loss_defaults``).
    """

    model: ModelConfig = knob(help="the policy (and, as loaded, the reference)", factory=ModelConfig)
    data: DataConfig = knob(
        help="preference, ranking or unpaired records (packed by default: no padding)", factory=_dpo_data
    )
    train: TrainConfig = knob(help="the training loop", factory=TrainConfig)
    loss: str = knob("dpo", "the preference loss: a name of losses.preference.PREFERENCE_LOSSES (listed above)")
    data_kind: str = knob(
        "preference",
        "preference, ranking (all pairs of each ranking) or unpaired (kto; preference rows split into desirable/undesirable)",
    )
    beta: float | None = knob(
        None, "β: temperature of the implicit reward β·log(π/π_ref) (SimPO: reward scale); empty: the loss's default"
    )
    label_smoothing: float | None = knob(
        None, "ε: assumed label-flip probability (cdpo, robust only); empty: the loss's default"
    )
    simpo_gamma: float | None = knob(None, "γ: SimPO's target reward margin; empty: the loss's default")
    orpo_lambda: float | None = knob(
        None, "λ: weight of ORPO's odds-ratio term next to the chosen NLL; empty: the loss's default"
    )
    rpo_alpha: float | None = knob(
        None, "α: weight of RPO's chosen NLL next to the DPO term; empty: the loss's default"
    )
    length_normalize: bool | None = knob(
        None, "reference-based paired losses: mean per-token log-probs instead of sums (IPO's default: true)"
    )
    desirable_weight: float = knob(1.0, "λ_D: KTO weight of desirable examples")
    undesirable_weight: float = knob(1.0, "λ_U: KTO weight of undesirable examples")
    dropout: bool = knob(
        False,
        "keep dropout on in the policy's pass (off: π_ref runs without it, so dropout would make the implicit reward noisy)",
    )
    reference_cache: bool = knob(True, "keep reference log-probs on disk (<cache>/reflogps) and reuse them across runs")

    def hyperparameters(self) -> dict:
        """The loss's hyperparameters: each set value, else the loss's published default."""
        from alignlab.losses.preference import loss_defaults

        out = loss_defaults(self.loss)
        for key in ("beta", "label_smoothing", "simpo_gamma", "orpo_lambda", "rpo_alpha", "length_normalize"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def check(self) -> None:
        from alignlab.losses.preference import get_preference_loss

        try:
            spec = get_preference_loss(self.loss)
        except ConfigError as e:  # name the key, keep the did-you-mean
            raise ConfigError(f"'loss': {e}") from None
        kinds = ("preference", "ranking") if spec.paired else ("preference", "unpaired")
        if self.data_kind not in kinds:
            raise ConfigError(
                f"'data_kind' must be one of {', '.join(kinds)} for loss '{self.loss}'; got {self.data_kind!r}"
            )
        for key in ("label_smoothing", "simpo_gamma", "orpo_lambda", "rpo_alpha"):
            if getattr(self, key) not in (None, 0.0) and key not in spec.hyperparameters:
                users = ", ".join(sorted(n for n, s in _preference_losses().items() if key in s.hyperparameters))
                raise ConfigError(f"'{key}' has no effect with loss '{self.loss}' (only {users}); leave it empty")
        if self.length_normalize and not spec.supports_length_normalize:
            raise ConfigError(
                f"'length_normalize' applies to reference-based paired losses that take sums, not '{self.loss}'"
            )
        beta = self.hyperparameters().get("beta")
        if beta is not None and not beta > 0:
            raise ConfigError(f"'beta' must be > 0; got {beta}")


def _preference_losses() -> dict:
    from alignlab.losses.preference import PREFERENCE_LOSSES

    return PREFERENCE_LOSSES


def _prompt_data() -> DataConfig:
    return DataConfig(train="demo:prompts", eval_fraction=0.05, max_prompt_length=128, max_length=512)


@dataclass
class RLSections:
    """The sections every RL-from-a-reward stage has (a stage's own knobs follow them)."""

    model: ModelConfig = knob(help="the policy (and, as loaded, the reference)", factory=ModelConfig)
    data: DataConfig = knob(
        help="prompt records (data.max_length is not used: responses get rollout.max_new_tokens)", factory=_prompt_data
    )
    train: TrainConfig = knob(
        help="the loop: batch_size = prompts per rollout, max_steps = rollouts", factory=TrainConfig
    )
    rollout: RolloutConfig = knob(help="sampling", factory=RolloutConfig)
    reward: RewardSourceConfig = knob(help="the reward source", factory=RewardSourceConfig)
    gold: str | None = knob(
        None,
        "a cheap rule-based gold reward (alignlab.gold spec, e.g. char_fraction(chars=abc)) scored on every rollout "
        "and logged as `gold` next to `score`, for the proxy_gold_gap monitor (empty: none)",
    )
    monitors: MonitorConfig = knob(help="reward-hacking and collapse monitors on every rollout", factory=MonitorConfig)
    reference: str | None = knob(
        None,
        "π_ref for the KL penalty: a model folder (e.g. runs/<run>/sft/final; iterated runs wire it for ppo@r), "
        "loaded frozen beside the policy; empty: the policy as loaded (with LoRA its adapter off, else a frozen copy)",
    )
    reference_weights: str = knob(
        "auto",
        "where π_ref's frozen copy (full fine-tuning, or a reference folder) keeps its weights: memory; disk (an "
        "unnamed file in the stage folder, read module by module in each reference pass: one copy of the weights "
        "less in memory, one read of them per pass); auto = disk on a CPU, memory on a GPU",
    )
    placement: str = knob(
        "auto",
        "devices of the frozen reference, the reward model and a separate value trunk: auto (one process with 2+ GPUs: "
        "reference and reward on cuda:1, a separate value trunk on cuda:2 when there is one), same (all on "
        "model.device), or role=device pairs such as reference=cuda:1,reward=cuda:1,value=cuda:2",
    )


def _check_rl(cfg, *, needs_groups: bool) -> None:
    """Checks shared by the RL stages (ppo, rloo, grpo)."""
    r = cfg.rollout
    if not r.temperature > 0:
        raise ConfigError(f"'rollout.temperature' must be > 0 for RL (responses are sampled); got {r.temperature}")
    if r.top_p != 1:
        raise ConfigError(
            f"'rollout.top_p' must be 1 for RL stages (got {r.top_p}): nucleus sampling draws from a truncated π "
            "whose log-probs, ratios and KL the trainer never sees, so the update would be for another policy; "
            "lower rollout.temperature instead (the log-probs use the same temperature)"
        )
    for key in ("max_new_tokens", "generation_batch_size", "forward_batch_size", "backward_batch_size"):
        if getattr(r, key) < 1:
            raise ConfigError(f"'rollout.{key}' must be at least 1; got {getattr(r, key)}")
    from alignlab.rollout.precision import sampling_dtype

    sampling_dtype(r.sampling_dtype)  # ConfigError naming the valid ones
    if r.engine not in ("auto", "transformers", "vllm"):
        raise ConfigError(f"'rollout.engine' must be one of auto, transformers, vllm; got {r.engine!r}")
    if cfg.reference_weights not in ("auto", "memory", "disk"):
        raise ConfigError(f"'reference_weights' must be one of auto, memory, disk; got {cfg.reference_weights!r}")
    if cfg.train.grad_accum != 1:
        raise ConfigError(
            "'train.grad_accum' must be 1 for RL stages: each optimizer step takes one minibatch of mini_batch_size rows"
        )
    if cfg.mini_batch_size < 1 or cfg.ppo_epochs < 1:
        raise ConfigError("'mini_batch_size' and 'ppo_epochs' must be at least 1")
    if cfg.gold:
        from alignlab.gold import get_gold

        try:
            get_gold(cfg.gold)
        except ConfigError as e:
            raise ConfigError(f"'gold': {e}") from None
    if cfg.monitors.baseline_steps < 1:
        raise ConfigError(f"'monitors.baseline_steps' must be at least 1; got {cfg.monitors.baseline_steps}")
    if needs_groups and cfg.group_size < 2:
        raise ConfigError(
            f"'group_size' must be at least 2 (a baseline needs another response to the same prompt); got {cfg.group_size}"
        )


@dataclass
class PPOConfig(RLSections):
    """PPO with a KL penalty (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022).

    One step = one rollout of train.batch_size prompts, then ppo_epochs passes over it in
    minibatches of mini_batch_size rows (one optimizer step each); train.max_steps counts
    rollouts and train.warmup_steps / the LR schedule are in rollouts too. The reward of a
    response is its score at the last token minus β times the per-token KL to π_ref (kl_penalty
    reward), or the KL goes into the loss as β·k2 (kl_penalty loss: k2's gradient on samples
    from π is ∇KL(π‖π_ref)). advantage_estimator reinforce_pp is REINFORCE++ (Hu 2025): no value
    model, returns normalised over the whole rollout's tokens.
    """

    advantage_estimator: str = knob(
        "gae",
        "gae (a value function, GAE(γ, λ)) or reinforce_pp (REINFORCE++: no value model, batch-normalised returns)",
    )
    value_model: str = knob(
        "head",
        "head (a value head on the policy's trunk: one network), separate (a second copy of the model with its own head), or none (reinforce_pp)",
    )
    mini_batch_size: int = knob(8, "rollout rows per optimizer step")
    ppo_epochs: int = knob(4, "passes over each rollout")
    cliprange: float = knob(0.2, "ε: clip range of the probability ratio")
    cliprange_value: float = knob(0.2, "ε_v: how far a value prediction may move from the rollout's (reward units)")
    vf_coef: float = knob(0.1, "weight of the value loss next to the policy loss")
    entropy_coef: float = knob(0.0, "weight of the entropy bonus subtracted from the loss (0: none)")
    target_kl: float = knob(
        0.0,
        "stop a rollout's epochs early once the k3 KL between sampling and current policy exceeds this (per token, nats; 0: never)",
    )
    gamma: float = knob(1.0, "γ: discount per token")
    gae_lambda: float = knob(0.95, "λ: GAE's bias/variance trade-off (1: Monte Carlo returns, 0: one-step TD)")
    whiten_advantages: bool = knob(True, "normalise advantages to mean 0, std 1 over the rollout's valid tokens")
    whiten_rewards: bool = knob(
        False,
        "normalise the rollout's scores to mean 0, std 1 before the KL penalty (per rollout; reward_norm is the running form)",
    )
    policy_reduction: str = knob("token", "policy loss average: token (per token) or sequence (per sequence)")
    kl_penalty: str = knob(
        "reward", "where the KL goes: reward (−β·kl_t in each token's reward) or loss (β·k2 added to the loss)"
    )
    kl_estimator: str = knob("k1", "per-token KL estimator in the reward: k1, k2 or k3 (losses.kl)")
    kl_controller: str = knob("fixed", "fixed β, or adaptive (β steered towards kl_target)")
    beta: float = knob(0.05, "β, the KL penalty's weight (the adaptive controller's initial β)")
    kl_target: float = knob(6.0, "adaptive controller: target KL per response (nats)")
    kl_horizon: float = knob(10000.0, "adaptive controller: horizon in responses")
    reward_norm: bool = knob(
        True, "divide scores by a running std and subtract a running mean (state kept in checkpoints)"
    )
    reward_clip: float = knob(10.0, "clip (normalised) scores to ±this (0: no clipping)")

    def check(self) -> None:
        from alignlab.losses.kl import KL_CONTROLLERS, KL_ESTIMATORS
        from alignlab.losses.ppo import POLICY_REDUCTIONS

        _check_rl(self, needs_groups=False)
        for key, valid in (
            ("kl_estimator", KL_ESTIMATORS),
            ("kl_controller", KL_CONTROLLERS),
            ("policy_reduction", POLICY_REDUCTIONS),
            ("value_model", ("head", "separate", "none")),
            ("advantage_estimator", ("gae", "reinforce_pp")),
            ("kl_penalty", ("reward", "loss")),
        ):
            if getattr(self, key) not in valid:
                raise ConfigError(
                    f"'{key}' must be one of {', '.join(valid)}{did_you_mean(getattr(self, key), valid)}; got {getattr(self, key)!r}"
                )
        if (self.value_model == "none") != (self.advantage_estimator == "reinforce_pp"):
            raise ConfigError(
                "'value_model' none goes with advantage_estimator=reinforce_pp (no critic), and gae needs a value model (head or separate)"
            )
        if self.beta < 0 or (self.kl_controller == "adaptive" and not self.beta > 0):
            raise ConfigError(f"'beta' must be >= 0 (> 0 for the adaptive controller); got {self.beta}")
        if self.kl_controller == "adaptive" and not (self.kl_target > 0 and self.kl_horizon > 0):
            raise ConfigError("'kl_target' and 'kl_horizon' must be > 0 for the adaptive controller")
        for key in ("reward_clip", "entropy_coef", "target_kl"):
            if getattr(self, key) < 0:
                raise ConfigError(f"'{key}' must be >= 0; got {getattr(self, key)}")


@dataclass
class RLOOConfig(RLSections):
    """RLOO: REINFORCE with a leave-one-out baseline over k responses per prompt (Ahmadian et al. 2024).

    Each score is penalised by β times the response's summed KL to π_ref before the baseline (the
    mean of the other k−1 penalised scores) is subtracted. No value model. One step = one rollout
    of train.batch_size prompts × group_size responses. Both losses are on-policy in expectation
    for every minibatch: after the first optimizer step the samples come from an older policy, so
    each response is weighted by its sequence ratio exp(Σ log π − Σ log π_old) (clipped for clip).
    """

    group_size: int = knob(4, "k: responses sampled per prompt")
    loss: str = knob(
        "reinforce",
        "reinforce (−ρ·A·Σ_t log π per response, ρ the sequence ratio, detached) or clip (−min(ρA, clip(ρ)A), sequence-level ρ)",
    )
    beta: float = knob(0.05, "β: weight of the summed per-token KL subtracted from each score")
    kl_estimator: str = knob("k1", "per-token KL estimator: k1, k2 or k3")
    mini_batch_size: int = knob(
        16,
        "rollout rows per optimizer step (with ppo_epochs 1 and at least batch_size x group_size rows the "
        "update is on-policy: the rollout's log-prob pass is also the training forward and backward, "
        "rollout.backward_batch_size rows at a time)",
    )
    ppo_epochs: int = knob(1, "passes over each rollout")
    cliprange: float = knob(0.2, "ε: clip range of the sequence ratio (loss=clip)")

    def check(self) -> None:
        from alignlab.losses.kl import KL_ESTIMATORS

        _check_rl(self, needs_groups=True)
        if self.loss not in ("reinforce", "clip"):
            raise ConfigError(
                f"'loss' must be reinforce or clip{did_you_mean(self.loss, ('reinforce', 'clip'))}; got {self.loss!r}"
            )
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(f"'kl_estimator' must be one of {', '.join(KL_ESTIMATORS)}; got {self.kl_estimator!r}")
        if self.beta < 0:
            raise ConfigError(f"'beta' must be >= 0; got {self.beta}")


GROUP_LOSS_HELP = "grpo (advantages / group std, per-sequence loss), dr_grpo (no std, loss / (G·max_new_tokens)), dapo (asymmetric clip, token-level loss over the batch, groups of equal scores dropped) or gspo (sequence-level ratio and clip)"


@dataclass
class GRPOConfig(RLSections):
    """GRPO and its successors: group-normalised advantages, no value model (Shao et al. 2024).

    loss dr_grpo (Liu et al. 2025) drops the division by the group std and normalises the loss by a
    constant (G · max_new_tokens): no length bias. dapo (Yu et al. 2025): clip range (ε_low, ε_high),
    token-level normalisation over the minibatch, dynamic sampling (groups whose scores are all
    equal give no gradient and are dropped) and, with overlong_cache > 0, a soft penalty for
    responses near rollout.max_new_tokens; no KL term by default. gspo (Zheng et al. 2025): the
    sequence-level ratio exp(mean_t log π/π_old), clipped at sequence level. Hyperparameters left
    empty take the loss's published default (losses.ppo.POLICY_LOSSES).
    """

    group_size: int = knob(4, "G: responses sampled per prompt")
    loss: str = knob("grpo", GROUP_LOSS_HELP)
    beta: float | None = knob(None, "β: weight of the k3 KL to π_ref in the loss (grpo, dr_grpo: 0.04; dapo, gspo: 0)")
    mini_batch_size: int = knob(
        16,
        "rollout rows per optimizer step (with ppo_epochs 1 and at least batch_size x group_size rows the "
        "update is on-policy: the rollout's log-prob pass is also the training forward and backward, "
        "rollout.backward_batch_size rows at a time)",
    )
    ppo_epochs: int = knob(1, "passes over each rollout")
    cliprange: float | None = knob(None, "ε: clip range of the ratio (grpo, dr_grpo: 0.2)")
    cliprange_low: float | None = knob(None, "ε_low (dapo: 0.2, gspo: 3e-4)")
    cliprange_high: float | None = knob(None, "ε_high (dapo: 0.28, gspo: 4e-4)")
    dynamic_sampling: bool | None = knob(None, "drop groups whose scores are all equal (dapo's default: true)")
    overlong_cache: int = knob(
        0,
        "dapo's soft overlong penalty: the last N tokens of rollout.max_new_tokens ramp the score down to −1 (0: off)",
    )

    def hyperparameters(self) -> dict:
        """The loss's knobs: each set value, else its published default."""
        from alignlab.losses.ppo import policy_loss_defaults

        base = {"grpo": "grpo", "dr_grpo": "grpo"}.get(self.loss, self.loss)
        out = {
            "beta": 0.04 if base == "grpo" else 0.0,
            "dynamic_sampling": self.loss == "dapo",
            **policy_loss_defaults(base),
        }
        for key in ("beta", "cliprange", "cliprange_low", "cliprange_high", "dynamic_sampling"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def check(self) -> None:
        _check_rl(self, needs_groups=True)
        losses = ("grpo", "dr_grpo", "dapo", "gspo")
        if self.loss not in losses:
            raise ConfigError(
                f"'loss' must be one of {', '.join(losses)}{did_you_mean(self.loss, losses)}; got {self.loss!r}"
            )
        h = self.hyperparameters()
        if h["beta"] < 0:
            raise ConfigError(f"'beta' must be >= 0; got {h['beta']}")
        if self.loss in ("grpo", "dr_grpo") and (self.cliprange_low is not None or self.cliprange_high is not None):
            raise ConfigError(
                f"'cliprange_low'/'cliprange_high' apply to dapo and gspo; loss '{self.loss}' takes cliprange"
            )
        if self.loss in ("dapo", "gspo") and self.cliprange is not None:
            raise ConfigError(f"loss '{self.loss}' takes cliprange_low and cliprange_high, not cliprange")
        if self.overlong_cache and (self.loss != "dapo" or not 0 < self.overlong_cache <= self.rollout.max_new_tokens):
            raise ConfigError("'overlong_cache' is dapo's, and must be in 1..rollout.max_new_tokens")


@dataclass
class BestOfNConfig:
    """Best-of-n: sample n responses per prompt, keep the one the reward source scores highest.

    An inference-time method: no training. Its KL to the sampling policy is at most
    log n − (n−1)/n nats (reported). Writes <output_dir>/<run_name>/best-of-n/samples.jsonl (the best response per prompt, with all n scores).
    """

    model: ModelConfig = knob(help="the policy to sample from", factory=ModelConfig)
    data: DataConfig = knob(help="prompt records (data.limit: how many prompts)", factory=_prompt_data)
    rollout: RolloutConfig = knob(help="sampling", factory=RolloutConfig)
    reward: RewardSourceConfig = knob(help="the reward source", factory=RewardSourceConfig)
    n: int = knob(4, "responses sampled per prompt")
    output_dir: str = knob("runs", "folder that holds run folders")
    run_name: str = knob("default", "name of this run's folder under output_dir")
    seed: int = knob(0, "sampling seed")

    def check(self) -> None:
        if self.n < 1:
            raise ConfigError(f"'n' must be at least 1; got {self.n}")
        if not self.rollout.temperature > 0 and self.n > 1:
            raise ConfigError(
                "'rollout.temperature' must be > 0 for best-of-n (greedy decoding gives n identical responses)"
            )


def _eval_data() -> DataConfig:
    return DataConfig(train="demo:prompts", eval_fraction=0.0, limit=48, max_prompt_length=128, max_length=512)


@dataclass
class EvalConfig:
    """Evaluation of a run's policies on the same prompts (alignlab.eval): gold reward with its interval,
    win rates against the baseline, paired gains, sampled KL to π_ref, the best-of-n frontier,
    over-optimisation fits, monitors and probes; the proxy's and (judge) an AI judge's win rates, the alignment
    tax (heldout_*: held-out NLL of reference answers), several objectives side by side and lm-evaluation-harness
    tasks (lm_eval). Writes <run>/eval/eval.json and samples.jsonl.
    """

    data: DataConfig = knob(help="prompt records the policies answer (data.limit: how many)", factory=_eval_data)
    rollout: RolloutConfig = knob(help="sampling (the same for every policy)", factory=RolloutConfig)
    policies: list[str] = knob(
        help="stages of the run to evaluate (empty: every complete stage with a final model)", factory=list
    )
    baseline: str = knob("sft", "the policy every other is compared with (and π_ref of the KL estimates)")
    samples: int = knob(2, "responses per prompt and policy")
    bon_samples: int = knob(8, "baseline responses per prompt for the best-of-n curve (0: none)")
    gold: str = knob("demo", "the gold reward (alignlab.gold spec, e.g. demo or sentiment+0.5*concise)")
    proxy: str | None = knob(None, "the proxy reward (a reward-model folder; wired from the run's reward stage)")
    probes: list[str] = knob(help="behaviour probes to run: sycophancy", factory=list)
    checkpoints: list[str] = knob(
        help="policy stages (e.g. ppo) whose saved checkpoints are sampled and scored too, in step order: the "
        "frontier's checkpoints, the RL over-optimisation fit and the proxy-gold gap across them (the stage "
        "needs train.save_every, and train.keep_last large enough to keep them)",
        factory=list,
    )
    harmless_data: str | None = knob(None, "HH-RLHF harmless prompts (jsonl[.gz]) for the harmlessness probe")
    harmless_limit: int = knob(64, "prompts of the harmlessness probe")
    judge: str | None = knob(
        None,
        "AI judge of each policy's responses against the baseline's (a preset such as smollm2-135m or tiny, or a model"
        " folder; null: off): win rate with ties and its agreement with gold; 2 forward passes (both orders) per pair,"
        " `samples` pairs per prompt and policy (smollm2-135m on 2 CPU cores: about 0.85 s a pair, 2 min for the quick"
        " profile, hence off there); turn on with judge=smollm2-135m",
    )
    judge_tie_margin: float = knob(0.0, "a judged pair with |P(policy better) - 0.5| <= this is a tie")
    heldout_data: str = knob(
        "demo:sft", "reference answers (sft records) for the alignment tax: held-out NLL per token of each policy"
    )
    heldout_fraction: float = knob(
        0.1,
        "share of heldout_data held out as SFT's data.eval_fraction does with the same seed (0: use every record)",
    )
    heldout_limit: int = knob(
        32, "held-out examples at most for the alignment tax (0: off; smollm2-135m, 16 examples: about 3 s a policy)"
    )
    objectives: list[str] = knob(
        help="several objectives reported side by side: name=gold spec items, e.g. helpful=demo, concise=concise"
        " (a bare spec is its own name)",
        factory=list,
    )
    lm_eval: list[str] = knob(
        help="lm-evaluation-harness tasks run on each policy's final model (needs lm_eval installed and the"
        " tasks' data in the local Hugging Face cache), e.g. hellaswag,arc_easy",
        factory=list,
    )
    lm_eval_limit: int | None = knob(None, "lm-eval examples per task at most (null: all)")
    model: ModelConfig = knob(help="device and dtype for the policies (name_or_path is not used)", factory=ModelConfig)
    output_dir: str = knob("runs", "folder that holds run folders")
    run_name: str = knob("default", "name of the run to evaluate")
    seed: int = knob(0, "sampling seed")

    def check(self) -> None:
        if self.samples < 1 or self.bon_samples < 0:
            raise ConfigError("'samples' must be at least 1 and 'bon_samples' at least 0")
        if not self.rollout.temperature > 0:
            raise ConfigError("'rollout.temperature' must be > 0: the KL estimates need samples from each policy")
        for p in self.probes:
            if p not in ("sycophancy", "harmlessness"):
                raise ConfigError(
                    f"'probes': unknown probe '{p}'{did_you_mean(p, ('sycophancy', 'harmlessness'))} (probes: sycophancy, harmlessness)"
                )
        if "harmlessness" in self.probes and not self.harmless_data:
            raise ConfigError("'probes' harmlessness needs 'harmless_data' (an HH-RLHF file)")
        if not 0.0 <= self.judge_tie_margin < 0.5:
            raise ConfigError(f"'judge_tie_margin' must be in [0, 0.5), got {self.judge_tie_margin}")
        if not 0.0 <= self.heldout_fraction < 1.0 or self.heldout_limit < 0:
            raise ConfigError("'heldout_fraction' must be in [0, 1) and 'heldout_limit' at least 0 (0: off)")
        if self.lm_eval_limit is not None and self.lm_eval_limit < 1:
            raise ConfigError(f"'lm_eval_limit' must be at least 1 or null, got {self.lm_eval_limit}")
        from alignlab.eval.objectives import parse_objectives

        parse_objectives(self.objectives)


@dataclass
class ReportConfig:
    """The run's report: one self-contained HTML file and summary.json (alignlab.report), from the run folder only."""

    output_dir: str = knob("runs", "folder that holds run folders")
    run_name: str = knob("default", "name of the run")
    figures: bool = knob(True, "also save the figures as PNG files beside report.html")


@dataclass
class LabelConfig:
    """Preference labels for the run (alignlab.feedback): sample k responses per prompt from the policy
    (the run's SFT model) and label them — simulated (Bradley–Terry on a gold reward, with its
    temperature, position bias, ties and a disagreeing panel), judge (an LLM judge, order-swapped),
    or constitutional (critique → revise → the judge's principle-guided choice). Writes
    <run>/label/preferences.jsonl (k = 2: pairs; k > 2: rankings) that the reward and dpo stages read.
    """

    model: ModelConfig = knob(help="the policy to sample from (wired from the run's sft stage)", factory=ModelConfig)
    data: DataConfig = knob(
        help="prompt records (data.limit: how many prompts)", factory=lambda: DataConfig(train="demo:prompts", limit=64)
    )
    source: str = knob(
        "simulated",
        "simulated, judge or constitutional (human labelling: `alignlab label --source human` or the web app)",
    )
    k: int = knob(2, "responses sampled per prompt (2: pairs; more: K-wise rankings)")
    gold: str = knob("demo", "the simulated annotator's gold reward (alignlab.gold spec)")
    tau: float = knob(
        0.2, "the annotator's Bradley–Terry temperature τ: P(a ≻ b) = σ((g(a) − g(b))/τ) (small: nearly noiseless)"
    )
    position_bias: float = knob(0.0, "added to the logit of the response shown first")
    tie_margin: float = knob(0.0, "|g(a) − g(b)| below this is a tie (dropped from pairs)")
    flip_rate: float = knob(0.0, "each annotator of the panel flips a label with this probability")
    annotators: int = knob(1, "annotators in the simulated panel")
    judge_model: str = knob("smollm2-135m", "the judge (judge and constitutional sources): a preset or model folder")
    max_new_tokens: int = knob(64, "tokens sampled at most per response")
    temperature: float = knob(1.0, "sampling temperature of the responses")
    output_dir: str = knob("runs", "folder that holds run folders")
    run_name: str = knob("default", "name of this run's folder under output_dir")
    seed: int = knob(0, "sampling and annotator seed")

    def check(self) -> None:
        if self.source not in ("simulated", "judge", "constitutional"):
            raise ConfigError(
                f"'source' must be simulated, judge or constitutional{did_you_mean(self.source, ('simulated', 'judge', 'constitutional'))}; got {self.source!r}"
            )
        if self.k < 2:
            raise ConfigError(f"'k' must be at least 2 (a label compares responses); got {self.k}")
        if not self.tau > 0 or not 0 <= self.flip_rate <= 0.5 or self.annotators < 1:
            raise ConfigError("'tau' must be > 0, 'flip_rate' in [0, 0.5] and 'annotators' at least 1")
