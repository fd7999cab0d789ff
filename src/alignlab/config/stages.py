"""One config dataclass per stage; the pipeline table (``alignlab.pipeline``) names them."""
from __future__ import annotations

from dataclasses import dataclass

from alignlab.config.parse import knob
from alignlab.config.sections import DataConfig, ModelConfig, RewardSourceConfig, RolloutConfig, TrainConfig
from alignlab.errors import ConfigError


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
    loss: str = knob("bradley_terry", "bradley_terry (pairs; a ranking gives all its pairs), kwise or plackett_luce (whole rankings)")
    margin: float = knob(0.0, "bradley_terry only: ask r_chosen - r_rejected to exceed this (reward units)")
    margin_from_data: bool = knob(False, "bradley_terry only: use each pair's own `margin` field (Llama 2 preference strength); pairs without one use `margin`")
    magnitude_penalty: float = knob(0.0, "coefficient of mean(r^2) added to the loss (pins the rewards' free offset near 0)")
    center_rewards: float = knob(0.0, "coefficient of mean((r_chosen + r_rejected)^2) added to the loss (centres each pair's rewards on 0; TRL suggests 0.01)")
    norm_prompts: str = knob("demo:prompts", "prompts whose reference-policy responses set the normalisation (mean 0, std 1)")
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
        if self.center_rewards < 0:
            raise ConfigError(f"'center_rewards' must be >= 0; got {self.center_rewards}")
        if self.center_rewards and self.data_kind != "preference" and self.loss != "bradley_terry":
            raise ConfigError("'center_rewards' applies to pairs (bradley_terry)")
        if self.magnitude_penalty < 0:
            raise ConfigError(f"'magnitude_penalty' must be >= 0; got {self.magnitude_penalty}")
        if self.norm_num_prompts < 0 or self.norm_max_new_tokens < 1:
            raise ConfigError("'norm_num_prompts' must be >= 0 and 'norm_max_new_tokens' >= 1")
        if self.data.packing:
            raise ConfigError("'data.packing' applies to sft and dpo; a reward model scores each response on its own row")


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
    data: DataConfig = knob(help="preference, ranking or unpaired records (packed by default: no padding)", factory=_dpo_data)
    train: TrainConfig = knob(help="the training loop", factory=TrainConfig)
    loss: str = knob("dpo", "the preference loss: a name of losses.preference.PREFERENCE_LOSSES (listed above)")
    data_kind: str = knob("preference", "preference, ranking (all pairs of each ranking) or unpaired (kto; preference rows split into desirable/undesirable)")
    beta: float | None = knob(None, "β: temperature of the implicit reward β·log(π/π_ref) (SimPO: reward scale); empty: the loss's default")
    label_smoothing: float | None = knob(None, "ε: assumed label-flip probability (cdpo, robust only); empty: the loss's default")
    simpo_gamma: float | None = knob(None, "γ: SimPO's target reward margin; empty: the loss's default")
    orpo_lambda: float | None = knob(None, "λ: weight of ORPO's odds-ratio term next to the chosen NLL; empty: the loss's default")
    rpo_alpha: float | None = knob(None, "α: weight of RPO's chosen NLL next to the DPO term; empty: the loss's default")
    length_normalize: bool | None = knob(None, "reference-based paired losses: mean per-token log-probs instead of sums (IPO's default: true)")
    desirable_weight: float = knob(1.0, "λ_D: KTO weight of desirable examples")
    undesirable_weight: float = knob(1.0, "λ_U: KTO weight of undesirable examples")
    dropout: bool = knob(False, "keep dropout on in the policy's pass (off: π_ref runs without it, so dropout would make the implicit reward noisy)")
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
            raise ConfigError(f"'data_kind' must be one of {', '.join(kinds)} for loss '{self.loss}'; got {self.data_kind!r}")
        for key in ("label_smoothing", "simpo_gamma", "orpo_lambda", "rpo_alpha"):
            if getattr(self, key) not in (None, 0.0) and key not in spec.hyperparameters:
                users = ", ".join(sorted(n for n, s in _preference_losses().items() if key in s.hyperparameters))
                raise ConfigError(f"'{key}' has no effect with loss '{self.loss}' (only {users}); leave it empty")
        if self.length_normalize and not spec.supports_length_normalize:
            raise ConfigError(f"'length_normalize' applies to reference-based paired losses that take sums, not '{self.loss}'")
        beta = self.hyperparameters().get("beta")
        if beta is not None and not beta > 0:
            raise ConfigError(f"'beta' must be > 0; got {beta}")


def _preference_losses() -> dict:
    from alignlab.losses.preference import PREFERENCE_LOSSES

    return PREFERENCE_LOSSES


def _prompt_data() -> DataConfig:
    return DataConfig(train="demo:prompts", eval_fraction=0.05, max_prompt_length=128, max_length=512)


def _check_rl(cfg, *, needs_groups: bool) -> None:
    """Checks shared by the RL stages (ppo, rloo, grpo)."""
    r = cfg.rollout
    if not r.temperature > 0:
        raise ConfigError(f"'rollout.temperature' must be > 0 for RL (responses are sampled); got {r.temperature}")
    if not 0 < r.top_p <= 1:
        raise ConfigError(f"'rollout.top_p' must be in (0, 1]; got {r.top_p}")
    for key in ("max_new_tokens", "generation_batch_size", "forward_batch_size"):
        if getattr(r, key) < 1:
            raise ConfigError(f"'rollout.{key}' must be at least 1; got {getattr(r, key)}")
    if r.engine not in ("auto", "transformers", "vllm"):
        raise ConfigError(f"'rollout.engine' must be one of auto, transformers, vllm; got {r.engine!r}")
    if cfg.train.grad_accum != 1:
        raise ConfigError("'train.grad_accum' must be 1 for RL stages: each optimizer step takes one minibatch of mini_batch_size rows")
    if cfg.mini_batch_size < 1 or cfg.ppo_epochs < 1:
        raise ConfigError("'mini_batch_size' and 'ppo_epochs' must be at least 1")
    if needs_groups and cfg.group_size < 2:
        raise ConfigError(f"'group_size' must be at least 2 (a baseline needs another response to the same prompt); got {cfg.group_size}")


@dataclass
class PPOConfig:
    """PPO with a KL penalty (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022).

    One step = one rollout of train.batch_size prompts, then ppo_epochs passes over it in
    minibatches of mini_batch_size rows (one optimizer step each); train.max_steps counts
    rollouts and train.warmup_steps / the LR schedule are in rollouts too. The reward of a
    response is its score at the last token minus β times the per-token KL to π_ref.
    """

    model: ModelConfig = knob(help="the policy (and, as loaded, the reference)", factory=ModelConfig)
    data: DataConfig = knob(help="prompt records (data.max_length is not used: responses get rollout.max_new_tokens)", factory=_prompt_data)
    train: TrainConfig = knob(help="the loop: batch_size = prompts per rollout, max_steps = rollouts", factory=TrainConfig)
    rollout: RolloutConfig = knob(help="sampling", factory=RolloutConfig)
    reward: RewardSourceConfig = knob(help="the reward source", factory=RewardSourceConfig)
    value_model: str = knob("head", "head (a value head on the policy's trunk: one network) or separate (a second copy of the model with its own head)")
    mini_batch_size: int = knob(8, "rollout rows per optimizer step")
    ppo_epochs: int = knob(4, "passes over each rollout")
    cliprange: float = knob(0.2, "ε: clip range of the probability ratio")
    cliprange_value: float = knob(0.2, "ε_v: how far a value prediction may move from the rollout's (reward units)")
    vf_coef: float = knob(0.1, "weight of the value loss next to the policy loss")
    gamma: float = knob(1.0, "γ: discount per token")
    gae_lambda: float = knob(0.95, "λ: GAE's bias/variance trade-off (1: Monte Carlo returns, 0: one-step TD)")
    whiten_advantages: bool = knob(True, "normalise advantages to mean 0, std 1 over the rollout's valid tokens")
    policy_reduction: str = knob("token", "policy loss average: token (per token) or sequence (per sequence)")
    kl_estimator: str = knob("k1", "per-token KL estimator in the reward: k1, k2 or k3 (losses.kl)")
    kl_controller: str = knob("fixed", "fixed β, or adaptive (β steered towards kl_target)")
    kl_coef: float = knob(0.05, "β, the KL penalty's weight (the adaptive controller's initial β)")
    kl_target: float = knob(6.0, "adaptive controller: target KL per response (nats)")
    kl_horizon: float = knob(10000.0, "adaptive controller: horizon in responses")
    reward_norm: bool = knob(True, "divide scores by a running std and subtract a running mean (state kept in checkpoints)")
    reward_clip: float = knob(10.0, "clip (normalised) scores to ±this (0: no clipping)")

    def check(self) -> None:
        from alignlab.losses.kl import KL_CONTROLLERS, KL_ESTIMATORS
        from alignlab.losses.ppo import POLICY_REDUCTIONS

        _check_rl(self, needs_groups=False)
        for key, valid in (
            ("kl_estimator", KL_ESTIMATORS),
            ("kl_controller", KL_CONTROLLERS),
            ("policy_reduction", POLICY_REDUCTIONS),
            ("value_model", ("head", "separate")),
        ):
            if getattr(self, key) not in valid:
                raise ConfigError(f"'{key}' must be one of {', '.join(valid)}; got {getattr(self, key)!r}")
        if self.kl_coef < 0 or (self.kl_controller == "adaptive" and not self.kl_coef > 0):
            raise ConfigError(f"'kl_coef' must be >= 0 (> 0 for the adaptive controller); got {self.kl_coef}")
        if self.kl_controller == "adaptive" and not (self.kl_target > 0 and self.kl_horizon > 0):
            raise ConfigError("'kl_target' and 'kl_horizon' must be > 0 for the adaptive controller")
        if self.reward_clip < 0:
            raise ConfigError(f"'reward_clip' must be >= 0; got {self.reward_clip}")


@dataclass
class RLOOConfig:
    """RLOO: REINFORCE with a leave-one-out baseline over k responses per prompt (Ahmadian et al. 2024).

    Each score is penalised by β times the response's summed KL to π_ref before the baseline (the
    mean of the other k−1 penalised scores) is subtracted. No value model. One step = one rollout
    of train.batch_size prompts × group_size responses.
    """

    model: ModelConfig = knob(help="the policy (and, as loaded, the reference)", factory=ModelConfig)
    data: DataConfig = knob(help="prompt records", factory=_prompt_data)
    train: TrainConfig = knob(help="the loop: batch_size = prompts per rollout, max_steps = rollouts", factory=TrainConfig)
    rollout: RolloutConfig = knob(help="sampling", factory=RolloutConfig)
    reward: RewardSourceConfig = knob(help="the reward source", factory=RewardSourceConfig)
    group_size: int = knob(4, "k: responses sampled per prompt")
    loss: str = knob("reinforce", "reinforce (−A·Σ_t log π per response; needs ppo_epochs=1) or clip (PPO's clipped ratio, per-sequence mean)")
    kl_coef: float = knob(0.05, "β: weight of the summed per-token KL subtracted from each score")
    kl_estimator: str = knob("k1", "per-token KL estimator: k1, k2 or k3")
    mini_batch_size: int = knob(16, "rollout rows per optimizer step")
    ppo_epochs: int = knob(1, "passes over each rollout")
    cliprange: float = knob(0.2, "ε: clip range of the ratio (loss=clip)")

    def check(self) -> None:
        from alignlab.losses.kl import KL_ESTIMATORS

        _check_rl(self, needs_groups=True)
        if self.loss not in ("reinforce", "clip"):
            raise ConfigError(f"'loss' must be reinforce or clip; got {self.loss!r}")
        if self.loss == "reinforce" and self.ppo_epochs != 1:
            raise ConfigError("'loss' reinforce has no importance ratio, so it needs ppo_epochs=1; use loss=clip for several epochs")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(f"'kl_estimator' must be one of {', '.join(KL_ESTIMATORS)}; got {self.kl_estimator!r}")
        if self.kl_coef < 0:
            raise ConfigError(f"'kl_coef' must be >= 0; got {self.kl_coef}")


@dataclass
class GRPOConfig:
    """GRPO: group-normalised advantages, clipped ratio, k3 KL to π_ref in the loss (Shao et al. 2024).

    variant dr_grpo (Liu et al. 2025) drops the division by the group std and normalises the loss
    by a constant (G · max_new_tokens) instead of each response's length: no length bias.
    """

    model: ModelConfig = knob(help="the policy (and, as loaded, the reference)", factory=ModelConfig)
    data: DataConfig = knob(help="prompt records", factory=_prompt_data)
    train: TrainConfig = knob(help="the loop: batch_size = prompts per rollout, max_steps = rollouts", factory=TrainConfig)
    rollout: RolloutConfig = knob(help="sampling", factory=RolloutConfig)
    reward: RewardSourceConfig = knob(help="the reward source", factory=RewardSourceConfig)
    group_size: int = knob(4, "G: responses sampled per prompt")
    variant: str = knob("grpo", "grpo (advantages / group std, per-sequence loss) or dr_grpo (no std, loss / (G·max_new_tokens))")
    beta: float = knob(0.04, "β: weight of the k3 KL to π_ref in the loss")
    mini_batch_size: int = knob(16, "rollout rows per optimizer step")
    ppo_epochs: int = knob(1, "passes over each rollout")
    cliprange: float = knob(0.2, "ε: clip range of the ratio")

    def check(self) -> None:
        from alignlab.losses.ppo import GRPO_LOSS_TYPES

        _check_rl(self, needs_groups=True)
        if self.variant not in GRPO_LOSS_TYPES:
            raise ConfigError(f"'variant' must be one of {', '.join(GRPO_LOSS_TYPES)}; got {self.variant!r}")
        if self.beta < 0:
            raise ConfigError(f"'beta' must be >= 0; got {self.beta}")


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
            raise ConfigError("'rollout.temperature' must be > 0 for best-of-n (greedy decoding gives n identical responses)")


