"""What the RL-from-a-reward stages share; PPO (``trainers.ppo``) and RLOO / GRPO (``trainers.group``)
compose these functions and differ only in how they turn a rollout into targets and a loss.

One step of every RL stage::

    prompts (train.batch_size, in a data order that is a pure function of (seed, step))
      -> sample   (engine, k responses per prompt)            time/generation
      -> score    (reward source, minus the truncation penalty) time/scoring
      -> no-grad pass: old log-probs, reference log-probs, values, entropy   time/logprobs
      -> the stage's targets (rewards, advantages, returns)
      -> ppo_epochs × minibatches: loss, backward, clip, optimizer step       time/training
      -> the stage's after-step hook (e.g. the adaptive KL controller), engine.sync_weights()
      -> LR schedule step, metrics.jsonl row, checkpoint every train.save_every steps

Models: the policy's dropout is switched off (log-probs of the same tokens must not change
between the rollout and the update, or the ratio carries noise). π_ref is, with LoRA, the same
network with its adapter disabled; with full fine-tuning a frozen deep copy of the initial
weights (memory: one more copy of the weights — about 0.54 GB for SmolLM2-135M in float32 — but
no gradients or optimizer state for it).

Exact resume: the checkpoint holds the policy (and value) weights, the optimizer, the scheduler,
the RNG states (so the next rollout samples the same tokens), and the stage's extra state (the
adaptive KL controller, the reward normaliser); minibatch orders come from a generator seeded by
(seed, step, epoch).
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from alignlab.losses.kl import kl_estimate
from alignlab.losses.reduce import masked_sum
from alignlab.models.logprobs import entropy_chunks, hidden_states, logprobs_from_hidden, trunk_and_head
from alignlab.rollout.experience import Experience
from alignlab.rollout.sampling import sample_rollout, sampling_params, score_rollout, tokenize_prompts
from alignlab.trainers.loop import DataOrder, FitResult, Loop, StepOutcome, mean_stats, train_loop
from alignlab.trainers.run import RunDir, open_stage


# ----------------------------------------------------------------------------- models
def disable_dropout(model) -> None:
    """Set every dropout probability of ``model`` to 0 (nn.Dropout modules and attention dropout)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "attention_dropout"):
        config.attention_dropout = 0.0


@dataclass
class RLModels:
    """The policy, its reference and (PPO) its value function."""

    model: Any  # π_θ (a peft model with LoRA, else a plain causal LM)
    tokenizer: Any
    ref_model: Any = None  # frozen copy of the initial weights (full fine-tuning); None with LoRA
    value_head: Any = None  # models.value.ValueHead or None
    value_model: Any = None  # a separate trunk for the value head, or None (head on the policy's trunk)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.value_model is not None:
            params += [p for p in self.value_model.parameters() if p.requires_grad]
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        return params

    def value_modules(self) -> torch.nn.ModuleDict:
        """What the value function adds to the policy (saved next to it; empty without a value)."""
        mods = {}
        if self.value_head is not None:
            mods["head"] = self.value_head
        if self.value_model is not None:
            mods["model"] = self.value_model
        return torch.nn.ModuleDict(mods)


def build_models(model_cfg, *, seed: int, value: str | None = None) -> RLModels:
    """Load the policy, set up π_ref, and a value head on its trunk (``head``) or a second copy (``separate``)."""
    from alignlab.models.load import is_peft, load_model
    from alignlab.models.logprobs import unwrap
    from alignlab.models.value import ValueHead

    loaded = load_model(model_cfg, seed=seed)
    model, tokenizer = loaded.model, loaded.tokenizer
    disable_dropout(model)
    ref_model = None
    if not is_peft(model):
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    value_head = value_model = None
    if value is not None:
        device = next(model.parameters()).device
        value_head = ValueHead(unwrap(model).config.hidden_size, device=device)
        if value == "separate":
            value_model = load_model(model_cfg, seed=seed).model
            disable_dropout(value_model)
    return RLModels(model, tokenizer, ref_model, value_head, value_model)


class TrainableState:
    """``state_dict`` / ``load_state_dict`` over a module's trainable tensors only (for checkpoints:
    a LoRA value model stores its adapter, not the frozen base weights)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.module.named_parameters() if p.requires_grad}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.module.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value.to(params[name].device))


# ----------------------------------------------------------------------------- forward passes
def response_hidden(model, exp: Experience, device) -> torch.Tensor:
    """Hidden states at the positions that predict each response token: ``(B, R, H)``."""
    P = exp.prompt_width
    hidden = hidden_states(model, exp.input_ids.to(device), exp.attention_mask.to(device), exp.position_ids.to(device))  # (B, P+R, H)
    return hidden[:, P - 1 : -1]  # (B, R, H): position P-1+t predicts response token t


def response_logprobs(model, exp: Experience, *, temperature: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(y_t) at ``temperature`` ``(B, R)`` float32, the hidden states ``(B, R, H)``)."""
    h = response_hidden(model, exp, device)
    _, head = trunk_and_head(model)
    mask = exp.response_mask.to(device)  # the head runs only on real response tokens; padding reads 0
    return logprobs_from_hidden(head, h, exp.response_ids.to(device), mask=mask, temperature=temperature), h


def policy_forward(models: RLModels, exp: Experience, *, temperature: float, with_values: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(logprobs ``(B, R)``, values ``(B, R)`` or None, policy hidden states ``(B, R, H)``), with grad."""
    logprobs, h = response_logprobs(models.model, exp, temperature=temperature, device=models.device)
    values = None
    if with_values and models.value_head is not None:
        vh = h if models.value_model is None else response_hidden(models.value_model, exp, models.device)
        values = models.value_head(vh)  # (B, R)
    return logprobs, values, h


@torch.no_grad()
def reference_logprobs(models: RLModels, exp: Experience, *, temperature: float) -> torch.Tensor:
    """log π_ref(y_t) ``(B, R)``: the adapter-less policy (LoRA) or the frozen initial copy."""
    if models.ref_model is not None:
        return response_logprobs(models.ref_model, exp, temperature=temperature, device=models.device)[0]
    from alignlab.models.logprobs import reference_mode  # eval mode, no grad, adapter disabled

    with reference_mode(models.model) as m:
        return response_logprobs(m, exp, temperature=temperature, device=models.device)[0]


@torch.no_grad()
def rollout_pass(models: RLModels, exp: Experience, *, temperature: float, with_values: bool, batch_size: int) -> dict:
    """Fill ``exp.old_logprobs``, ``exp.ref_logprobs`` (and ``exp.values``) in chunks of ``batch_size`` rows.

    Returns stats: ``entropy`` (per-token mean entropy of π at ``temperature`` over valid tokens).
    """
    _, head = trunk_and_head(models.model)
    olds, refs, vals = [], [], []
    ent_sum, ent_count = 0.0, 0.0
    for start in range(0, len(exp), batch_size):
        part = exp.select(torch.arange(start, min(start + batch_size, len(exp))))
        logprobs, values, h = policy_forward(models, part, temperature=temperature, with_values=with_values)
        mask = part.response_mask.to(h.device)
        n = float(mask.sum())
        ent_sum += float(entropy_chunks(head, h, mask, temperature=temperature)) * n
        ent_count += n
        olds.append(logprobs.float().cpu())
        refs.append(reference_logprobs(models, part, temperature=temperature).float().cpu())
        if values is not None:
            vals.append(values.float().cpu())
    exp.old_logprobs = torch.cat(olds)  # (B, R)
    exp.ref_logprobs = torch.cat(refs)  # (B, R)
    exp.values = torch.cat(vals) if vals else None  # (B, R)
    return {"entropy": ent_sum / max(ent_count, 1.0)}


def sequence_kl(exp: Experience, estimator: str) -> torch.Tensor:
    """Σ_t kl_t per response ``(B,)`` from the rollout's old and reference log-probs."""
    kl = kl_estimate(exp.old_logprobs, exp.ref_logprobs, estimator)  # (B, R)
    return masked_sum(kl, exp.response_mask, dim=-1)  # (B,)


# ----------------------------------------------------------------------------- one rollout
@contextlib.contextmanager
def timed(timings: dict, name: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[f"time/{name}"] = timings.get(f"time/{name}", 0.0) + time.perf_counter() - t0


def sample_and_score(ctx: "RLContext", records, prompt_ids, *, k: int, with_values: bool) -> tuple[Experience, dict]:
    """The part of making experience every RL stage shares: sample, score, no-grad pass. Returns (exp, stats)."""
    cfg = ctx.cfg
    stats: dict = {}
    with timed(stats, "generation"):
        exp, gens = sample_rollout(ctx.engine, ctx.models.tokenizer, prompt_ids, sampling_params(cfg.rollout), k=k)
    with timed(stats, "scoring"):
        exp.scores = score_rollout(ctx.reward, records, gens, truncation_penalty=cfg.rollout.truncation_penalty, k=k)
    with timed(stats, "logprobs"):
        stats.update(rollout_pass(ctx.models, exp, temperature=cfg.rollout.temperature, with_values=with_values, batch_size=cfg.rollout.forward_batch_size))
    lengths = exp.response_lengths
    stats.update(
        {
            "score": float(exp.scores.mean()),
            "score_std": float(exp.scores.std()) if len(exp) > 1 else 0.0,
            "response_length": float(lengths.mean()),
            "finished": float(exp.finished.float().mean()),
            "gen_tokens_per_s": float(lengths.sum()) / max(stats["time/generation"], 1e-9),
        }
    )
    return exp, stats


# ----------------------------------------------------------------------------- the loop
@dataclass
class RLContext:
    """Everything a stage's experience and loss functions need."""

    cfg: Any
    run: RunDir
    models: RLModels
    engine: Any
    reward: Any
    train_records: list
    train_ids: list[list[int]]
    eval_records: list = field(default_factory=list)
    eval_ids: list[list[int]] = field(default_factory=list)


@dataclass
class RLAlgorithm:
    """A stage's part of the loop (see the module docstring)."""

    make_experience: Callable[[list, list[list[int]]], tuple[Experience, dict]]  # (records, prompt ids) -> (exp, stats)
    loss: Callable[[Experience], tuple[torch.Tensor, dict]]  # one minibatch -> (loss, stats)
    after_step: Callable[[Experience, dict], dict] = lambda exp, stats: {}  # -> extra stats to log
    extra_state: dict = field(default_factory=dict)  # name -> object with state_dict/load_state_dict


def update_on(ctx: RLContext, exp: Experience, step: int, loss_fn, loop: Loop) -> tuple[dict, bool]:
    """``ppo_epochs`` passes over ``exp`` in shuffled minibatches, one optimizer step each.

    Returns (mean stats over the applied updates, halt): ``halt`` when the non-finite guard has
    seen ``train.max_bad_steps`` bad updates in a row. ``skipped_updates`` counts the minibatches
    whose loss or gradient was non-finite (not applied); ``loss`` is NaN when none was applied.
    """
    cfg = ctx.cfg
    acc, norms, skipped = [], [], 0
    for epoch in range(cfg.ppo_epochs):
        g = torch.Generator().manual_seed((cfg.train.seed * 1_000_003 + step) * 1_009 + epoch)
        for mb in exp.minibatches(cfg.mini_batch_size, g):
            loss, stats = loss_fn(mb)
            finite = bool(torch.isfinite(loss))
            if finite:
                loss.backward()
            norm, stepped = loop.apply(finite)
            if stepped:
                acc.append({"loss": loss.detach(), **stats})
                norms.append(float(norm))
            else:
                skipped += 1
                ctx.run.log.warning("step %d: non-finite loss or gradient in a minibatch; update skipped", step + 1)
                if loop.guard.bad():
                    return {"loss": float("nan"), **(mean_stats(acc) if acc else {}), "skipped_updates": skipped}, True
    out = mean_stats(acc) if acc else {"loss": float("nan")}
    out["grad_norm"] = sum(norms) / len(norms) if norms else float("nan")
    out["skipped_updates"] = skipped
    return out, False


def rl_fit(ctx: RLContext, algo: RLAlgorithm, *, save_model, load_model, eval_fn=None, stop_after: int | None = None) -> FitResult:
    """The RL stages' part of :func:`~alignlab.trainers.loop.train_loop`: one step = one rollout
    (``algo.make_experience``) and its updates (``algo.loss`` on minibatches), for ``train.max_steps``
    rollouts (or ``train.epochs`` passes over the prompts)."""
    tcfg = ctx.cfg.train
    order = DataOrder(len(ctx.train_records), tcfg.batch_size, tcfg.seed)
    total = tcfg.max_steps or max(1, math.ceil(tcfg.epochs * order.per_epoch))

    def update(step: int, loop: Loop) -> StepOutcome:
        index = order.batch(step)
        t0 = time.perf_counter()
        exp, stats = algo.make_experience([ctx.train_records[i] for i in index], [ctx.train_ids[i] for i in index])
        t1 = time.perf_counter()
        train_stats, halt = update_on(ctx, exp, step, algo.loss, loop)
        stats.update(train_stats)
        stats["time/training"] = time.perf_counter() - t1
        if halt:
            return StepOutcome(stats, halt=f"{tcfg.max_bad_steps} updates in a row had a non-finite loss or gradient (check the reward source)")
        stats.update(algo.after_step(exp, stats))
        ctx.engine.sync_weights()
        stats["time/step"] = time.perf_counter() - t0
        return StepOutcome(stats)

    return train_loop(
        cfg=tcfg, run=ctx.run, model=ctx.models.model, params=ctx.models.trainable_parameters(), total=total,
        update=update, save_model=save_model, load_model=load_model, eval_fn=eval_fn,
        extra_state=dict(algo.extra_state), after_resume=ctx.engine.sync_weights,
        postfix=lambda st: {"score": f"{st.get('score', float('nan')):.3f}", "kl": f"{st.get('kl', float('nan')):.3f}"},
        eval_mode=False, stop_after=stop_after,
    )


# ----------------------------------------------------------------------------- a whole stage
def sample_scored(ctx: RLContext, records, prompt_ids, *, seed: int) -> list[dict]:
    """One seeded response per prompt with its score (evaluation and samples.jsonl; the training RNG is untouched)."""
    if not records:
        return []
    from alignlab.data.tokenize import messages_of

    _, gens = sample_rollout(ctx.engine, ctx.models.tokenizer, prompt_ids, sampling_params(ctx.cfg.rollout, seed=seed))
    scores = score_rollout(ctx.reward, records, gens, truncation_penalty=ctx.cfg.rollout.truncation_penalty)
    return [
        {"prompt": messages_of(r.prompt), "response": g.text, "score": float(s), "finished": g.finished, "length": len(g.response_ids)}
        for r, g, s in zip(records, gens, scores.tolist())
    ]


def eval_prompts(ctx: RLContext) -> tuple[list, list[list[int]]]:
    tcfg = ctx.cfg.train
    n = len(ctx.eval_records) if not tcfg.eval_batches else tcfg.eval_batches * tcfg.batch_size
    return ctx.eval_records[:n], ctx.eval_ids[:n]


def run_rl_stage(cfg, stage: str, build_algo: Callable[[RLContext], RLAlgorithm], *, value: str | None = None, stop_after: int | None = None) -> dict:
    """Set up a stage (run folder, prompts, models, engine, reward source), run :func:`rl_fit`, write outputs.

    ``build_algo(ctx)`` returns the stage's :class:`RLAlgorithm`; ``value`` is ``"head"``,
    ``"separate"`` or None (no value function).
    """
    from alignlab.rollout.rewards import load_reward_source
    from alignlab.rollout.vllm_engine import make_engine
    from alignlab.trainers.common import load_split, model_io, seed_everything

    # the reward source first: a wrong module:function fails before the run folder exists
    reward = load_reward_source(cfg.reward.source, cfg.reward.kwargs, device=cfg.model.device, batch_size=cfg.reward.batch_size)
    with open_stage(cfg, stage) as run:
        seed_everything(cfg.train.seed)
        train_records, eval_records = load_split(cfg.data, "prompt", cfg.train.seed, run.log)
        models = build_models(cfg.model, seed=cfg.train.seed, value=value)
        tok = models.tokenizer
        engine = make_engine(
            cfg.rollout.engine, models.model, tok, batch_size=cfg.rollout.generation_batch_size,
            gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization, seed=cfg.train.seed,
        )
        run.log.info("engine %s, reward source %s, reference: %s", type(engine).__name__, reward.name,
                     "frozen copy" if models.ref_model is not None else "adapter disabled")
        ctx = RLContext(
            cfg, run, models, engine, reward,
            train_records, tokenize_prompts(train_records, tok, cfg.data.max_prompt_length, run.log),
            eval_records, tokenize_prompts(eval_records, tok, cfg.data.max_prompt_length),
        )
        algo = build_algo(ctx)
        save_policy, load_policy = model_io(models.model, tok, cfg.model, cfg.train.seed)
        values = models.value_modules()
        if len(values):
            algo.extra_state["value"] = TrainableState(values)

        def eval_fn() -> dict:
            rows = sample_scored(ctx, *eval_prompts(ctx), seed=cfg.train.seed)
            return {"score": sum(r["score"] for r in rows) / len(rows), "response_length": sum(r["length"] for r in rows) / len(rows)}

        result = rl_fit(
            ctx, algo, save_model=save_policy, load_model=load_policy,
            eval_fn=eval_fn if ctx.eval_records else None, stop_after=stop_after,
        )
        summary = {
            "stage": stage,
            "steps": result.step,
            "score": result.train_stats.get("score"),
            "kl": result.train_stats.get("kl"),
            "eval_score": result.eval_stats.get("score"),
            "train_prompts": len(train_records),
            "eval_prompts": len(eval_records),
            "skipped_steps": result.skipped_steps,
        }
        if not result.finished:
            return summary
        run.replace_final(save_policy)
        if len(values):
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in TrainableState(values).state_dict().items()}, str(run.path / "value.safetensors"))
        if cfg.train.num_samples:
            pool_records, pool_ids = (ctx.eval_records, ctx.eval_ids) if ctx.eval_records else (train_records, ctx.train_ids)
            n = cfg.train.num_samples
            run.write_samples(sample_scored(ctx, pool_records[:n], pool_ids[:n], seed=cfg.train.seed))
        return run.complete(summary)

