"""Configuration: one dataclass per stage, the same object from YAML, the command line and Python.

A stage config is a tree of small dataclasses (``model``, ``data``, ``train`` and the stage's own
knobs). Each field carries a one-line help text (``--help`` prints them) and a default.

* ``load_config(SFTConfig, "file.yaml", ["train.lr=1e-4", "lora.r=8"])`` builds one.
* An override key may be dotted (``train.lr``) or, when unambiguous, just the leaf (``lr``).
* Unknown keys are a :class:`ConfigError` naming the key and the closest valid one.
* Values are parsed as YAML scalars and checked against the field's type.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.errors import ConfigError


def knob(default: Any = dataclasses.MISSING, help: str = "", *, factory=None):
    """A config field with its help text (shown by ``--help``)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


# ----------------------------------------------------------------------------- shared sections
@dataclass
class LoraConfig:
    """Low-rank adapters (peft). With LoRA the reference model is the policy with adapters off."""

    enabled: bool = knob(False, "train LoRA adapters instead of all weights")
    r: int = knob(16, "adapter rank")
    alpha: int = knob(32, "adapter scaling alpha (effective scale alpha/r)")
    dropout: float = knob(0.05, "dropout on the adapter input")
    target_modules: list[str] = knob(
        help="module names that get adapters",
        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )


@dataclass
class ModelConfig:
    """Which network to train and how to hold it."""

    name_or_path: str = knob(
        "smollm2-135m",
        "a preset (smollm2-135m, tiny), a local Hugging Face folder, or a hub id already in the local cache",
    )
    dtype: str = knob("auto", "auto (fp32 on CPU, bf16 on GPU), float32, bfloat16 or float16")
    device: str = knob("auto", "auto (cuda if available), cpu or cuda[:N]")
    trust_remote_code: bool = knob(False, "allow the model folder's own Python code to run (off: safe)")
    gradient_checkpointing: str = knob(
        "auto",
        "activations recomputed in backward to save memory: none; selective (keep matmul and attention outputs, "
        "recompute the element-wise ops: ~40% less activation memory, no matmul twice); full (keep only each "
        "layer's input: least memory, every layer runs twice); auto = selective for full fine-tuning, none with LoRA",
    )
    lora: LoraConfig = knob(help="LoRA adapters", factory=LoraConfig)


@dataclass
class DataConfig:
    """Where the records come from and how they are cut into tokens."""

    train: str = knob("demo:sft", "training data: a file (jsonl, json, csv, parquet), a datasets folder, or demo:<name>")
    eval: str | None = knob(None, "held-out data; when empty, eval_fraction of train is held out")
    eval_fraction: float = knob(0.1, "fraction of train held out for evaluation when eval is empty")
    limit: int | None = knob(None, "use at most this many training records")
    max_length: int = knob(512, "tokens per example (prompt + response); prompts are cut from the left, responses from the right")
    max_prompt_length: int = knob(384, "prompt tokens kept at most (cut from the left, keeping the latest turns)")
    packing: bool = knob(False, "pack several sequences into one row, no padding (positions restart, attention blocked per sequence): sft and dpo")


@dataclass
class TrainConfig:
    """The shared training loop: optimiser, schedule, checkpoints and logging."""

    output_dir: str = knob("runs", "folder that holds run folders")
    run_name: str = knob("default", "name of this run's folder under output_dir")
    seed: int = knob(0, "seed for weights of random models, data order, dropout and sampling")
    lr: float = knob(2e-4, "peak learning rate")
    weight_decay: float = knob(0.0, "AdamW weight decay")
    adam_beta1: float = knob(0.9, "AdamW beta1")
    adam_beta2: float = knob(0.999, "AdamW beta2")
    adam_eps: float = knob(1e-8, "AdamW epsilon")
    scheduler: str = knob("cosine", "learning-rate decay after warmup: cosine, linear or constant")
    warmup_steps: int = knob(5, "optimizer steps of linear warmup from 0")
    max_steps: int = knob(0, "optimizer steps to run; 0 means `epochs` passes over the data")
    epochs: float = knob(1.0, "passes over the training data when max_steps is 0")
    batch_size: int = knob(8, "examples per micro-batch")
    grad_accum: int = knob(1, "micro-batches per optimizer step")
    max_grad_norm: float = knob(1.0, "clip the global gradient norm to this (0: no clipping)")
    eval_every: int = knob(0, "evaluate every N optimizer steps (0: only at the end)")
    eval_batches: int = knob(0, "evaluate on at most N batches (0: all)")
    save_every: int = knob(0, "checkpoint every N optimizer steps (0: only at the end)")
    keep_last: int = knob(2, "checkpoints kept (older ones are deleted after a newer one is complete)")
    log_every: int = knob(1, "write metrics every N optimizer steps")
    tensorboard: bool = knob(False, "also write TensorBoard events (needs the tensorboard package)")
    max_bad_steps: int = knob(3, "halt after this many non-finite losses or gradients in a row")
    resume: bool = knob(False, "continue from the newest complete checkpoint of this run")
    progress: bool = knob(True, "show a progress bar")
    num_samples: int = knob(4, "responses sampled from held-out prompts after training (0: none)")


# ----------------------------------------------------------------------------- stage configs
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


STAGE_CONFIGS: dict[str, type] = {"sft": SFTConfig, "generate": GenerateConfig}


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
    magnitude_penalty: float = knob(0.0, "coefficient of mean(r^2) added to the loss (pins the rewards' free offset near 0)")
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
        if self.margin != 0.0 and self.loss != "bradley_terry":
            raise ConfigError(f"'margin' applies to loss bradley_terry only; set margin=0 for loss '{self.loss}'")
        if self.magnitude_penalty < 0:
            raise ConfigError(f"'magnitude_penalty' must be >= 0; got {self.magnitude_penalty}")
        if self.norm_num_prompts < 0 or self.norm_max_new_tokens < 1:
            raise ConfigError("'norm_num_prompts' must be >= 0 and 'norm_max_new_tokens' >= 1")
        if self.data.packing:
            raise ConfigError("'data.packing' applies to sft and dpo; a reward model scores each response on its own row")


@dataclass
class DPOConfig:
    """Direct preference methods: dpo, cdpo, ipo, hinge, robust, kto (unpaired), orpo, simpo (reference-free).

    The reference π_ref is the model as loaded. With LoRA it is the same network with the adapter
    disabled; with full fine-tuning its log-probs are computed from the initial weights before the
    first step. Either way no second copy of the model is held, and the reference log-probs are
    computed once per data set and cached on disk.
    """

    model: ModelConfig = knob(help="the policy (and, as loaded, the reference)", factory=ModelConfig)
    data: DataConfig = knob(help="preference, ranking or unpaired records (packed by default: no padding)", factory=_dpo_data)
    train: TrainConfig = knob(help="the training loop", factory=TrainConfig)
    loss: str = knob("dpo", "dpo, cdpo, ipo, hinge, robust, kto, orpo or simpo (see losses.preference)")
    data_kind: str = knob("preference", "preference, ranking (all pairs of each ranking) or unpaired (kto; preference rows split into desirable/undesirable)")
    beta: float = knob(0.1, "β: temperature of the implicit reward β·log(π/π_ref) (SimPO: reward scale, typically 2.0)")
    label_smoothing: float = knob(0.0, "ε: assumed label-flip probability (cdpo, robust only)")
    gamma: float = knob(0.5, "γ: SimPO's target reward margin")
    orpo_lambda: float = knob(0.1, "λ: weight of ORPO's odds-ratio term next to the chosen NLL")
    length_normalize: bool = knob(False, "reference-based paired losses: use mean per-token log-probs instead of sums")
    desirable_weight: float = knob(1.0, "λ_D: KTO weight of desirable examples")
    undesirable_weight: float = knob(1.0, "λ_U: KTO weight of undesirable examples")
    reference_cache: bool = knob(True, "keep reference log-probs on disk (<cache>/reflogps) and reuse them across runs")

    def check(self) -> None:
        from alignlab.losses.preference import get_preference_loss

        try:
            spec = get_preference_loss(self.loss)
        except ConfigError as e:  # name the key, keep the did-you-mean
            raise ConfigError(f"'loss': {e}") from None
        kinds = ("preference", "ranking") if spec.paired else ("preference", "unpaired")
        if self.data_kind not in kinds:
            raise ConfigError(f"'data_kind' must be one of {', '.join(kinds)} for loss '{self.loss}'; got {self.data_kind!r}")
        if self.label_smoothing != 0.0 and "label_smoothing" not in spec.hyperparameters:
            raise ConfigError(f"'label_smoothing' has no effect with loss '{self.loss}' (only cdpo, robust); set it to 0")
        if self.length_normalize and not (spec.paired and spec.needs_reference):
            raise ConfigError(f"'length_normalize' applies to reference-based paired losses, not '{self.loss}'")
        if not self.beta > 0:
            raise ConfigError(f"'beta' must be > 0; got {self.beta}")


STAGE_CONFIGS.update({"reward": RewardConfig, "dpo": DPOConfig})


# ----------------------------------------------------------------------------- RL from a reward
def _prompt_data() -> DataConfig:
    return DataConfig(train="demo:prompts", eval_fraction=0.05, max_prompt_length=128, max_length=512)


@dataclass
class RolloutConfig:
    """Sampling responses for RL. The same temperature scales the logits when log-probs are recomputed."""

    max_new_tokens: int = knob(64, "tokens generated at most per response")
    temperature: float = knob(1.0, "sampling temperature (> 0); training log-probs use the same temperature")
    top_p: float = knob(1.0, "nucleus sampling mass (1: off; below 1 samples from a truncated π that the log-probs do not see)")
    truncation_penalty: float = knob(0.0, "subtracted from the score of a response that hit max_new_tokens without EOS (0: none)")
    engine: str = knob("auto", "auto (vLLM when installed and a GPU is present, else transformers), transformers or vllm")
    generation_batch_size: int = knob(32, "prompts per model.generate call (transformers engine)")
    forward_batch_size: int = knob(16, "rows per no-grad forward pass for old/reference log-probs and values")
    vllm_gpu_memory_utilization: float = knob(0.3, "fraction of GPU memory vLLM may take (vllm engine only)")


@dataclass
class RewardSourceConfig:
    """Where scores come from (see alignlab.rollout.rewards)."""

    source: str = knob(
        "house_style",
        "a reward-model folder, a built-in rule (house_style, contains_word, char_fraction), module:function, or gold",
    )
    kwargs: list[str] = knob(help="key=value options for a Python or built-in reward function, e.g. word=thanks", factory=list)
    batch_size: int = knob(16, "responses per reward-model forward pass")


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
    log n − (n−1)/n nats (reported). Writes <output_dir>/<run_name>/best-of-n/responses.jsonl.
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


STAGE_CONFIGS.update({"ppo": PPOConfig, "rloo": RLOOConfig, "grpo": GRPOConfig, "best-of-n": BestOfNConfig})


# ----------------------------------------------------------------------------- machinery
def _leaf_keys(cls: type, prefix: str = "") -> dict[str, dataclasses.Field]:
    """All dotted leaf keys of a config class, e.g. ``{"train.lr": Field, ...}``."""
    out: dict[str, dataclasses.Field] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out.update(_leaf_keys(t, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = f
    return out


def describe(cls: type) -> list[tuple[str, str, Any]]:
    """(dotted key, help, default) for every leaf: what ``--help`` prints."""
    rows = []
    defaults = to_dict(cls())
    for key, f in _leaf_keys(cls).items():
        value: Any = defaults
        for part in key.split("."):
            value = value[part]
        rows.append((key, f.metadata.get("help", ""), value))
    return rows


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not close:
        leaf = key.split(".")[-1]
        close = [v for v in valid if v.split(".")[-1] == leaf][:1] or difflib.get_close_matches(
            leaf, valid, n=1, cutoff=0.5
        )
    return f"; did you mean '{close[0]}'?" if close else ""


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _coerce(value: Any, annotation: Any, key: str, where: str) -> Any:
    """Check ``value`` against ``annotation`` (int, float, bool, str, list[T], T | None)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, where)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}'{key}': expected a list, got {value!r}")
        return [_coerce(v, item_type, key, where) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, bool):
            raise ConfigError(
                f"{where}'{key}': expected a string, got {value!r} (YAML reads an unquoted yes, no, on, off, true or false as a boolean: quote it)"
            )
    else:  # pragma: no cover - a config class with an unsupported annotation is a bug here
        raise TypeError(f"unsupported config type {annotation!r} for {key}")
    expected = _TYPE_NAMES.get(annotation, str(annotation))
    raise ConfigError(f"{where}'{key}': expected {expected}, got {value!r}")


def from_dict(cls: type, data: dict, *, where: str = "", prefix: str = "") -> Any:
    """Build ``cls`` from a nested dict, rejecting unknown keys with a suggestion."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}'{prefix.rstrip('.') or 'config'}': expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    valid = list(_leaf_keys(cls, prefix)) + [prefix + n for n in names]
    kwargs = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in names:
            raise ConfigError(f"{where}unknown key '{prefix}{key}'{_suggest(prefix + str(key), valid)}")
        t = hints[key]
        if dataclasses.is_dataclass(t):
            # a partial section keeps this stage's own defaults for the keys it does not name
            fld = next(f for f in dataclasses.fields(cls) if f.name == key)
            if isinstance(value, dict) and fld.default_factory is not dataclasses.MISSING:
                value = _merge(to_dict(fld.default_factory()), value)
            kwargs[key] = from_dict(t, value, where=where, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, t, prefix + key, where)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """A plain nested dict (YAML-safe) of a config object."""
    return dataclasses.asdict(cfg)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def _resolve_key(cls: type, key: str) -> str:
    """Map a possibly short override key (``lr``) to its dotted form (``train.lr``)."""
    leaves = list(_leaf_keys(cls))
    if key in leaves:
        return key
    matches = [k for k in leaves if k.endswith("." + key)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"override key '{key}' is ambiguous: use one of {', '.join(matches)}")
    raise ConfigError(f"unknown key '{key}'{_suggest(key, leaves)}")


def parse_overrides(cls: type, overrides: list[str]) -> dict:
    """``["train.lr=1e-4", "lora.enabled=true"]`` -> nested dict of parsed values."""
    import yaml

    tree: dict = {}
    leaves = _leaf_keys(cls)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        key = _resolve_key(cls, key.strip())
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        kind = str(leaves[key].type)
        if isinstance(value, bool) and kind.startswith("str"):
            value = raw.strip()  # a string field takes the word as typed (YAML would read `off` as false)
        optional = "None" in kind  # `key=none` empties an optional field; elsewhere "none" is a word
        if optional and raw.strip().lower() in ("none", "null", "~"):
            value = None
        _set_dotted(tree, key, value)
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict:
    """Read a YAML config file; errors name the file and line."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not valid UTF-8 at byte {e.start}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config file must be a mapping of keys, got {type(data).__name__}")
    return data


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None):
    """Defaults <- ``base`` dict <- YAML file <- ``key=value`` overrides, validated into ``cls``."""
    tree: dict = dict(base or {})
    where = ""
    if path is not None:
        tree = _merge(tree, read_yaml(path))
        where = f"{path}: "
    cfg = from_dict(cls, tree, where=where)
    if overrides:
        cfg = from_dict(cls, _merge(to_dict(cfg), parse_overrides(cls, overrides)))
    validate(cfg)
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


_CHOICES = {
    "train.scheduler": ("cosine", "linear", "constant"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "model.gradient_checkpointing": ("auto", "none", "selective", "full"),
}


def validate(cfg: Any) -> None:
    """Value checks that types alone cannot express; raises ConfigError naming the key."""
    flat = _flatten(to_dict(cfg))
    for key, choices in _CHOICES.items():
        if key in flat and flat[key] not in choices:
            raise ConfigError(f"'{key}' must be one of {', '.join(choices)}; got {flat[key]!r}")
    positive = ["train.batch_size", "train.grad_accum", "data.max_length", "train.keep_last", "train.max_bad_steps"]
    for key in positive:
        if key in flat and flat[key] < 1:
            raise ConfigError(f"'{key}' must be at least 1; got {flat[key]}")
    if "train.lr" in flat and not flat["train.lr"] > 0:
        raise ConfigError(f"'train.lr' must be positive; got {flat['train.lr']}")
    if "data.eval_fraction" in flat and not 0 <= flat["data.eval_fraction"] < 1:
        raise ConfigError(f"'data.eval_fraction' must be in [0, 1); got {flat['data.eval_fraction']}")
    if "data.max_prompt_length" in flat and flat["data.max_prompt_length"] >= flat["data.max_length"]:
        raise ConfigError("'data.max_prompt_length' must be smaller than 'data.max_length' so responses keep tokens")
    check = getattr(cfg, "check", None)
    if callable(check):
        check()


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_diff(a: Any, b: Any, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs (used to refuse a resume into another run)."""
    fa, fb = _flatten(a if isinstance(a, dict) else to_dict(a)), _flatten(b if isinstance(b, dict) else to_dict(b))
    keys = sorted(set(fa) | set(fb))
    return [k for k in keys if k not in ignore and fa.get(k) != fb.get(k)]
