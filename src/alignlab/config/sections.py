"""The sections every stage config is built from: model, LoRA, data, the training loop, rollouts, reward source."""

from __future__ import annotations

from dataclasses import dataclass

from alignlab.config.parse import knob


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

    train: str = knob(
        "demo:sft", "training data: a file (jsonl, json, csv, parquet), a datasets folder, or demo:<name>"
    )
    eval: str | None = knob(None, "held-out data; when empty, eval_fraction of train is held out")
    eval_fraction: float = knob(0.1, "fraction of train held out for evaluation when eval is empty")
    limit: int | None = knob(None, "use at most this many training records")
    max_length: int = knob(
        512, "tokens per example (prompt + response); prompts are cut from the left, responses from the right"
    )
    max_prompt_length: int = knob(384, "prompt tokens kept at most (cut from the left, keeping the latest turns)")
    packing: bool = knob(
        False,
        "pack several sequences into one row, no padding (positions restart, attention blocked per sequence): sft and "
        "dpo; shared-prompt pairs (share_prompt) are always placed on the rows of least padding-plus-attention work",
    )
    share_prompt: bool = knob(
        True,
        "pairs (dpo paired losses, reward pairs): one row [prompt | chosen | rejected]; RL groups (grpo, rloo, k > 1): "
        "one row [prompt | y1 | ... | yk] in the log-prob and training passes. Each prompt computed once (a 4-D mask "
        "hides one response from another; same numbers, fewer tokens); off when the model cannot take 4-D masks",
    )


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
    strategy: str = knob(
        "ddp",
        "with several processes (torchrun, --num-processes): ddp (whole model in each), fsdp2 (sharded, torch's "
        "fully_shard), zero2 or zero3 (DeepSpeed ZeRO stage 2: AdamW state and gradients partitioned; 3: parameters "
        "too; needs deepspeed)",
    )


@dataclass
class RolloutConfig:
    """Sampling responses for RL. The same temperature scales the logits when log-probs are recomputed."""

    max_new_tokens: int = knob(64, "tokens generated at most per response")
    temperature: float = knob(1.0, "sampling temperature (> 0); training log-probs use the same temperature")
    top_p: float = knob(
        1.0, "nucleus sampling mass (1: off; below 1 samples from a truncated π that the log-probs do not see)"
    )
    truncation_penalty: float = knob(
        0.0, "subtracted from the score of a response that hit max_new_tokens without EOS (0: none)"
    )
    engine: str = knob(
        "auto", "auto (vLLM when installed and a GPU is present, else transformers), transformers or vllm"
    )
    generation_batch_size: int = knob(32, "prompts per decoding batch (transformers engine)")
    sampling_dtype: str = knob(
        "model",
        "dtype the transformers engine samples in: model (the policy's own) or bfloat16/float16 (a copy cast for "
        "each call; about 2x the tokens/s on a CPU with AMX, the sampled distribution off by the rounding, "
        "logged as sampler/kl; every log-prob the losses use stays in the model's dtype)",
    )
    forward_batch_size: int = knob(16, "rows per no-grad forward pass for old/reference log-probs and values")
    backward_batch_size: int = knob(
        8,
        "rows per forward+backward chunk of an on-policy RLOO/GRPO update (one epoch over one minibatch), "
        "rounded to whole groups: smaller holds fewer activations at once, larger runs faster",
    )
    vllm_gpu_memory_utilization: float = knob(0.3, "fraction of GPU memory vLLM may take (vllm engine only)")
    save_every: int = knob(
        1,
        "write the rollout of every N-th step token by token to <stage>/rollouts/ (the web app's inspector; 0: never)",
    )
    save_rows: int = knob(16, "responses written per saved rollout")


@dataclass
class RewardSourceConfig:
    """Where scores come from (see alignlab.rollout.rewards)."""

    source: str = knob(
        "house_style",
        "a reward-model folder, a built-in rule (house_style, contains_word, char_fraction), module:function, or gold",
    )
    kwargs: list[str] = knob(
        help="key=value options for a Python or built-in reward function, e.g. word=thanks", factory=list
    )
    batch_size: int = knob(16, "responses per reward-model forward pass")


@dataclass
class MonitorConfig:
    """Reward-hacking and collapse monitors computed on every RL rollout (alignlab.eval.monitors):
    logged as monitor/<name> in metrics.jsonl, and one WARNING in log.txt the first time each
    crosses its threshold. Drifts are measured against the mean of the first ``baseline_steps`` rollouts."""

    enabled: bool = knob(True, "compute the monitors on every rollout (cheap: word statistics of the responses)")
    baseline_steps: int = knob(
        5, "rollouts whose mean response length, entropy and rm/disagreement are the start the drifts compare with"
    )
    length_drift: float = knob(
        2.0, "fires when mean response tokens / the start's is above this or below 1/this (ratio)"
    )
    repetition: float = knob(
        0.3, "fires when the mean share of repeated word 3-grams within a response (1 − distinct-3) is above this"
    )
    diversity: float = knob(
        0.8,
        "fires when the mean pairwise Jaccard similarity of responses to one prompt (all responses when k = 1) is above this",
    )
    entropy_collapse: float = knob(0.25, "fires when the rollout's per-token entropy / the start's is below this")
    proxy_gold_gap: float = knob(
        0.3, "with `gold`: fires when gold gave back more than this share of its range since its peak while score rose"
    )
    disagreement: float = knob(2.0, "reward ensembles: fires when rm/disagreement / the start's is above this")
