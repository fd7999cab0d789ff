"""What the RL-from-a-reward stages share; PPO (``trainers.ppo``) and RLOO / GRPO (``trainers.group``)
compose these functions and differ only in how they turn a rollout into targets and a loss.

One step of every RL stage::

    prompts (train.batch_size, in a data order that is a pure function of (seed, step))
      -> sample   (engine, k responses per prompt)            time/generation
      -> score    (reward source, minus the truncation penalty) time/scoring
      -> no-grad pass: old log-probs, reference log-probs, values, entropy   time/logprobs
      -> monitors on the rollout (trainers.monitoring): gold, monitor/*   (a WARNING when one fires)
      -> the stage's targets (rewards, advantages, returns)
      -> ppo_epochs × minibatches: loss, backward, clip, optimizer step       time/training
      -> the stage's after-step hook (e.g. the adaptive KL controller), engine.sync_weights()
      -> LR schedule step, metrics.jsonl row, checkpoint every train.save_every steps

The networks are set up by :mod:`alignlab.models.policy`, the no-grad and training forward
passes are :mod:`alignlab.rollout.passes`, and the loop is the shared
:func:`~alignlab.trainers.loop.train_loop`; this file wires them.

Exact resume: the checkpoint holds the policy (and value) weights, the optimizer, the scheduler,
the RNG states (so the next rollout samples the same tokens), and the stage's extra state (the
adaptive KL controller, the reward normaliser, the monitors' start and series); minibatch orders come from a generator seeded by
(seed, step, epoch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from alignlab import distributed
from alignlab.errors import ConfigError
from alignlab.losses.reduce import masked_mean
from alignlab.models.policy import RLModels, TrainableState, build_models
from alignlab.rollout.experience import Experience
from alignlab.rollout.parallel import gather_rollout, my_share, split_policy_forward
from alignlab.rollout.passes import policy_forward, rollout_pass
from alignlab.rollout.rewards import last_user_text
from alignlab.rollout.sampling import sample_rollout, sampling_params, score_rollout, tokenize_prompts
from alignlab.rollout.throughput import compute_limit_fraction
from alignlab.trainers.loop import DataOrder, FitResult, Loop, StepOutcome, make_optimizer, mean_stats, train_loop
from alignlab.trainers.monitoring import TrainingMonitors, build_monitors
from alignlab.trainers.run import RunDir, open_stage


# ----------------------------------------------------------------------------- one rollout
@contextlib.contextmanager
def timed(timings: dict, name: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[f"time/{name}"] = timings.get(f"time/{name}", 0.0) + time.perf_counter() - t0


def sampler_kl(sampled: list[list[float]], logprobs: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over the valid response tokens of ``log π_s(y_t) − log π(y_t)``: the sampler's own
    log-probs ``sampled`` (one list per row) against the training pass's ``logprobs`` (B, R) on the
    same tokens; an unbiased estimate of KL(π_s ‖ π) since the tokens were drawn from π_s."""
    own = torch.zeros_like(logprobs)
    for i, row in enumerate(sampled):
        own[i, : len(row)] = torch.tensor(row, dtype=logprobs.dtype)
    return float(masked_mean(own - logprobs, mask, allow_empty=True))


def sample_and_score(
    ctx: RLContext, records, prompt_ids, *, k: int, with_values: bool, backward=None
) -> tuple[Experience, dict]:
    """The part of making experience every RL stage shares: sample, score, no-grad pass. Returns (exp, stats).

    ``backward``: an on-policy update backpropagates through the pass chunk by chunk (``rollout_pass``);
    its seconds move from ``time/logprobs`` to ``time/backward``."""
    cfg = ctx.cfg
    stats: dict = {}
    params = sampling_params(cfg.rollout)
    low_precision = cfg.rollout.sampling_dtype != "model"  # sampled from a cast copy: measure the gap
    if low_precision:
        params = dataclasses.replace(params, logprobs=True)
    with timed(stats, "generation"):
        exp, gens = sample_rollout(ctx.engine, ctx.models.tokenizer, prompt_ids, params, k=k)
    with timed(stats, "scoring"):
        exp.scores = score_rollout(ctx.reward, records, gens, truncation_penalty=cfg.rollout.truncation_penalty, k=k)
    exp.prompt_texts = [last_user_text(r.prompt) for r in records for _ in range(k)]
    own: dict = {}  # stats of this process's share of the rollout
    if getattr(ctx.reward, "last_disagreement", None) is not None:  # a reward-model ensemble's spread
        own["rm/disagreement"] = ctx.reward.last_disagreement
    with timed(stats, "logprobs"):
        own.update(
            rollout_pass(
                ctx.models,
                exp,
                temperature=cfg.rollout.temperature,
                with_values=with_values,
                batch_size=cfg.rollout.forward_batch_size,
                backward=backward,
                backward_rows=cfg.rollout.backward_batch_size,
                group=k,
            )
        )
    stats["time/logprobs"] -= own.get("time/backward", 0.0)
    if low_precision and all(g.logprobs is not None for g in gens):
        own["sampler/kl"] = sampler_kl([g.logprobs for g in gens], exp.old_logprobs, exp.response_mask)
    texts = [g.text for g in gens]
    if distributed.active():  # every process now holds the whole rollout (rollout.parallel)
        own = distributed.weighted_mean_stats([(float(exp.response_mask.sum()), own)])
        tok = ctx.models.tokenizer
        exp, texts = gather_rollout(
            exp, texts, k=k, pad_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        )
    stats.update(own)
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
    # against the compute limit (2N FLOPs per token at this machine's measured fp32 matmul rate)
    stats["gen_limit_frac"] = compute_limit_fraction(stats["gen_tokens_per_s"], ctx.models.model)
    if ctx.monitors is not None:  # the whole rollout, before any stage drops rows (DAPO's dynamic sampling)
        stats.update(ctx.monitors.measure(exp.prompt_texts, texts, k=k, stats=stats))
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
    monitors: TrainingMonitors | None = None  # reward-hacking and collapse monitors on every rollout

    def policy_forward(self, mb: Experience, *, temperature: float, with_values: bool):
        """The training forward pass over a minibatch: (log-probs (B, R), values (B, R) or None, hidden
        states (B, R, H), None with several processes, which split the rows: rollout.parallel)."""
        if distributed.active():
            return split_policy_forward(self.models, mb, temperature=temperature, with_values=with_values)
        return policy_forward(self.models, mb, temperature=temperature, with_values=with_values)


@dataclass
class RLAlgorithm:
    """A stage's part of the loop (see the module docstring)."""

    make_experience: Callable[[list, list[list[int]]], tuple[Experience, dict]]  # (records, prompt ids) -> (exp, stats)
    loss: Callable[[Experience], tuple[torch.Tensor, dict]]  # one minibatch -> (loss, stats)
    after_step: Callable[[Experience, dict], dict] = lambda exp, stats: {}  # -> extra stats to log
    extra_state: dict = field(default_factory=dict)  # name -> object with state_dict/load_state_dict


def write_rollout(ctx: RLContext, exp: Experience, step: int) -> None:
    """``rollouts/step-XXXXXXXX.jsonl``: the first ``rollout.save_rows`` responses token by token
    (alignlab.runs.ROLLOUT_FIELDS), for the web app's inspector."""
    from alignlab.losses.kl import kl_estimate
    from alignlab.runs import atomic_write_jsonl

    tok = ctx.models.tokenizer
    estimator = getattr(ctx.cfg, "kl_estimator", "k1")
    kl = kl_estimate(exp.old_logprobs, exp.ref_logprobs, estimator)  # (B, R)
    rows = []
    for i in range(min(len(exp), ctx.cfg.rollout.save_rows)):
        n = int(exp.response_mask[i].sum())
        ids = exp.response_ids[i, :n].tolist()
        if exp.advantages is None:
            per_token = None
        elif exp.advantages.dim() == 2:  # (B, R): PPO's per-token advantages
            per_token = exp.advantages[i, :n].tolist()
        else:  # (B,): one advantage per response (RLOO, GRPO)
            per_token = [float(exp.advantages[i])] * n
        reward = None
        if exp.rewards is not None:
            reward = float(exp.rewards[i, :n].sum()) if exp.rewards.dim() == 2 else float(exp.rewards[i])
        rows.append(
            {
                "step": step,
                "prompt": exp.prompt_texts[i] if exp.prompt_texts else "",
                "response": tok.decode(ids, skip_special_tokens=True),
                "tokens": [tok.decode([t]) for t in ids],
                "logprobs": exp.old_logprobs[i, :n].tolist(),
                "ref_logprobs": exp.ref_logprobs[i, :n].tolist(),
                "kl": kl[i, :n].tolist(),
                "advantages": per_token,
                "score": float(exp.scores[i]),
                "reward": reward,
            }
        )
    atomic_write_jsonl(ctx.run.folder.rollout_path(step), rows)


def update_on(ctx: RLContext, exp: Experience, step: int, loss_fn, loop: Loop, parallel=None) -> tuple[dict, bool]:
    """``ppo_epochs`` passes over ``exp`` in shuffled minibatches, one optimizer step each.

    ``parallel`` (several processes): ``loss_fn`` runs inside the wrapper (DDP), and each process
    backpropagates ``W · loss``: its loss is the whole minibatch's, but its gradient only its rows'
    (see :mod:`alignlab.rollout.parallel`), and DDP averages over the ``W`` processes.

    Returns (mean stats over the applied updates, halt): ``halt`` when the non-finite guard has
    seen ``train.max_bad_steps`` bad updates in a row. ``skipped_updates`` counts the minibatches
    whose loss or gradient was non-finite (not applied); ``loss`` is NaN when none was applied.
    """
    cfg = ctx.cfg
    acc, norms, skipped = [], [], 0
    for epoch in range(cfg.ppo_epochs):
        g = torch.Generator().manual_seed((cfg.train.seed * 1_000_003 + step) * 1_009 + epoch)
        for mb in exp.minibatches(cfg.mini_batch_size, g):
            loss, stats = loss_fn(mb) if parallel is None else parallel.forward(mb)
            finite = bool(torch.isfinite(loss))  # the same in every process (the whole minibatch's loss)
            if parallel is not None and (finite or parallel.engine_steps):  # ZeRO's engine runs every backward
                parallel.backward(loss * parallel.world, finite)
            elif finite and not mb.backpropagated:  # (an on-policy rollout pass has backpropagated already)
                loss.backward()
            norm, stepped = loop.apply(finite)
            if stepped:
                acc.append({"loss": loss.detach(), **stats})
                norms.append(float(norm))
                target = getattr(cfg, "target_kl", 0.0)
                if target and float(stats.get("policy/approx_kl", 0.0)) > target:
                    # the policy moved further from the sampling policy than asked: stop this rollout's epochs
                    out = mean_stats(acc)
                    out.update(grad_norm=sum(norms) / len(norms), skipped_updates=skipped, early_stop_epoch=epoch + 1)
                    return out, False
            else:
                skipped += 1
                ctx.run.log.warning("step %d: non-finite loss or gradient in a minibatch; update skipped", step + 1)
                if loop.guard.bad():
                    return {"loss": float("nan"), **(mean_stats(acc) if acc else {}), "skipped_updates": skipped}, True
    out = mean_stats(acc) if acc else {"loss": float("nan")}
    out["grad_norm"] = sum(norms) / len(norms) if norms else float("nan")
    out["skipped_updates"] = skipped
    return out, False


def rl_fit(
    ctx: RLContext, algo: RLAlgorithm, *, save_model, load_model, eval_fn=None, stop_after: int | None = None
) -> FitResult:
    """The RL stages' part of :func:`~alignlab.trainers.loop.train_loop`: one step = one rollout
    (``algo.make_experience``) and its updates (``algo.loss`` on minibatches), for ``train.max_steps``
    rollouts (or ``train.epochs`` passes over the prompts)."""
    tcfg = ctx.cfg.train
    order = DataOrder(len(ctx.train_records), tcfg.batch_size, tcfg.seed)
    total = tcfg.max_steps or max(1, math.ceil(tcfg.epochs * order.per_epoch))
    params = ctx.models.trainable_parameters()
    parallel = None
    if distributed.active():
        check_parallel(ctx.cfg)
        if tcfg.strategy != "ddp" and tcfg.resume:
            # FSDP2 and ZeRO: the checkpoint's full weights go into the model before it is sharded
            load_model = preload_for_sharding(ctx, algo, load_model)
        parallel = distributed.DataParallel(
            ctx.models.model,
            params,
            algo.loss,
            tcfg.strategy,
            make_optimizer=lambda ps: make_optimizer(ps, tcfg),
            max_grad_norm=tcfg.max_grad_norm,
            extra=ctx.models.value_modules(),
        )
        params = parallel.params
        ctx.run.log.info(parallel.describe())
    full_params = parallel.full_params if parallel is not None else contextlib.nullcontext

    def update(step: int, loop: Loop) -> StepOutcome:
        index = order.batch(step)
        t0 = time.perf_counter()
        if parallel is not None:
            index = my_share(index)  # this process samples its share; the rollout is then gathered whole
        # sampling and the no-grad pass run on full weights (FSDP2 and ZeRO-3 gather them for the rollout)
        with own_stream(tcfg.seed, step) if parallel is not None else contextlib.nullcontext(), full_params():
            exp, stats = algo.make_experience([ctx.train_records[i] for i in index], [ctx.train_ids[i] for i in index])
        if ctx.monitors is not None:
            ctx.monitors.warn(step + 1, ctx.run.log, stage=ctx.run.stage)
        every = ctx.cfg.rollout.save_every
        if every and (step + 1) % every == 0 and distributed.is_main():
            write_rollout(ctx, exp, step + 1)
        t1 = time.perf_counter()
        train_stats, halt = update_on(ctx, exp, step, algo.loss, loop, parallel)
        stats.update(train_stats)
        stats["time/training"] = time.perf_counter() - t1 + stats.get("time/backward", 0.0)
        if halt:
            return StepOutcome(
                stats,
                halt=f"{tcfg.max_bad_steps} updates in a row had a non-finite loss or gradient (check the reward source)",
            )
        stats.update(algo.after_step(exp, stats))
        ctx.engine.sync_weights()
        stats["time/step"] = time.perf_counter() - t0
        return StepOutcome(stats)

    return train_loop(
        cfg=tcfg,
        run=ctx.run,
        model=ctx.models.model,
        params=params,
        total=total,
        update=update,
        save_model=save_model,
        load_model=load_model,
        eval_fn=eval_fn,
        extra_state=dict(algo.extra_state),
        after_resume=ctx.engine.sync_weights,
        postfix=lambda st: {"score": f"{st.get('score', float('nan')):.3f}", "kl": f"{st.get('kl', float('nan')):.3f}"},
        eval_mode=False,
        stop_after=stop_after,
        parallel=parallel,
    )


def preload_for_sharding(ctx: RLContext, algo: RLAlgorithm, load_model):
    """Resume under FSDP2 or ZeRO: load the latest checkpoint's policy and value weights now, before
    the wrapper shards them; returns the ``load_model`` the loop should call then (nothing left to do).
    The value state is then restored here too, so the loop's copy of it loads nothing."""
    from alignlab.trainers import checkpoint as ckpt

    latest = ckpt.latest_complete(ctx.run.ckpt_dir)
    if latest is None:
        return load_model
    load_model(latest / "model")
    value = algo.extra_state.get("value")
    if value is not None:
        saved = ckpt.read_extra(latest).get("value")
        if saved is not None:
            value.load_state_dict(saved)
        algo.extra_state["value"] = _SavedOnly(value)
    return lambda folder: None


class _SavedOnly:
    """An extra state that is saved as usual but already loaded (see :func:`preload_for_sharding`)."""

    def __init__(self, inner):
        self.inner = inner

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state) -> None:
        pass


@contextlib.contextmanager
def own_stream(seed: int, step: int):
    """With several processes: this process samples step ``step``'s rollout from its own RNG stream,
    seeded by (seed, step, rank), and leaves the shared stream as it was (so every process's, and
    rank 0's checkpointed, RNG state stays the same)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(((seed * 1_000_003 + step) * 1_009 + distributed.rank()) % 2**63)
        yield


def check_parallel(cfg) -> None:
    """Refuse, in one line, what the RL stages do not do on several processes."""
    W = distributed.world_size()
    if cfg.train.batch_size < W:
        raise ConfigError(f"train.batch_size ({cfg.train.batch_size}) must be at least the number of processes ({W})")
    if getattr(cfg, "entropy_coef", 0.0):
        raise ConfigError("entropy_coef > 0 is not supported on several processes yet: run in one process")


# ----------------------------------------------------------------------------- a whole stage
def sample_scored(ctx: RLContext, records, prompt_ids, *, seed: int) -> list[dict]:
    """One seeded response per prompt with its score (evaluation and samples.jsonl; the training RNG is untouched)."""
    if not records:
        return []
    from alignlab.data.tokenize import messages_of

    _, gens = sample_rollout(ctx.engine, ctx.models.tokenizer, prompt_ids, sampling_params(ctx.cfg.rollout, seed=seed))
    scores = score_rollout(ctx.reward, records, gens, truncation_penalty=ctx.cfg.rollout.truncation_penalty)
    return [
        {
            "prompt": messages_of(r.prompt),
            "response": g.text,
            "score": float(s),
            "finished": g.finished,
            "length": len(g.response_ids),
        }
        for r, g, s in zip(records, gens, scores.tolist())
    ]


def eval_prompts(ctx: RLContext) -> tuple[list, list[list[int]]]:
    tcfg = ctx.cfg.train
    n = len(ctx.eval_records) if not tcfg.eval_batches else tcfg.eval_batches * tcfg.batch_size
    return ctx.eval_records[:n], ctx.eval_ids[:n]


def run_rl_stage(
    cfg,
    stage: str,
    build_algo: Callable[[RLContext], RLAlgorithm],
    *,
    value: str | None = None,
    stop_after: int | None = None,
) -> dict:
    """Set up a stage (run folder, prompts, models, engine, reward source), run :func:`rl_fit`, write outputs.

    ``build_algo(ctx)`` returns the stage's :class:`RLAlgorithm`; ``value`` is ``"head"``,
    ``"separate"`` or None (no value function).
    """
    from alignlab.models import placement
    from alignlab.models.load import resolve_device
    from alignlab.rollout.precision import sampling_dtype
    from alignlab.rollout.rewards import load_reward_source
    from alignlab.rollout.vllm_engine import make_engine
    from alignlab.trainers.common import load_split, model_io, seed_everything

    devices = placement.plan(
        cfg.placement,
        policy_device=str(resolve_device(cfg.model.device)),
        gpus=torch.cuda.device_count(),
        processes=distributed.world_size(),
    )
    # the reward source first: a wrong module:function fails before the run folder exists
    reward = load_reward_source(
        cfg.reward.source, cfg.reward.kwargs, device=devices["reward"], batch_size=cfg.reward.batch_size
    )
    with open_stage(cfg, stage) as run:
        seed_everything(cfg.train.seed)
        train_records, eval_records = load_split(cfg.data, "prompt", cfg.train.seed, run.log)
        models = build_models(
            cfg.model,
            seed=cfg.train.seed,
            value=value,
            reference=cfg.reference,
            devices=devices,
            reference_weights=cfg.reference_weights,
            weights_dir=str(run.path),
        )
        run.log.info("placement %s: %s", cfg.placement, placement.describe(devices))
        if cfg.reference:
            run.consumed["reference"] = cfg.reference
        if cfg.data.share_prompt and getattr(cfg, "group_size", 1) > 1:  # rows of a group share their prompt
            from alignlab.models.logprobs import prompt_sharing_works

            models.share_prompt = prompt_sharing_works(models.model, run.log, what="group")
        tok = models.tokenizer
        engine = make_engine(
            cfg.rollout.engine,
            models.model,
            tok,
            batch_size=cfg.rollout.generation_batch_size,
            gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization,
            seed=cfg.train.seed,
            dtype=sampling_dtype(cfg.rollout.sampling_dtype),
        )
        run.log.info(
            "engine %s, reward source %s, reference: %s",
            type(engine).__name__,
            reward.name,
            "frozen copy" if models.ref_model is not None else "adapter disabled",
        )
        ctx = RLContext(
            cfg,
            run,
            models,
            engine,
            reward,
            train_records,
            tokenize_prompts(train_records, tok, cfg.data.max_prompt_length, run.log),
            eval_records,
            tokenize_prompts(eval_records, tok, cfg.data.max_prompt_length),
            monitors=build_monitors(cfg),
        )
        algo = build_algo(ctx)
        algo.extra_state["monitors"] = ctx.monitors
        save_policy, load_policy = model_io(models.model, tok, cfg.model, cfg.train.seed)
        values = models.value_modules()
        if len(values):
            algo.extra_state["value"] = TrainableState(values)

        def eval_fn() -> dict:
            rows = sample_scored(ctx, *eval_prompts(ctx), seed=cfg.train.seed)
            return {
                "score": sum(r["score"] for r in rows) / len(rows),
                "response_length": sum(r["length"] for r in rows) / len(rows),
            }

        result = rl_fit(
            ctx,
            algo,
            save_model=save_policy,
            load_model=load_policy,
            eval_fn=eval_fn if ctx.eval_records else None,
            stop_after=stop_after,
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
        if len(values) and distributed.is_main():
            from safetensors.torch import save_file

            save_file(
                {k: v.contiguous() for k, v in TrainableState(values).state_dict().items()},
                str(run.path / "value.safetensors"),
            )
        if cfg.train.num_samples:
            pool_records, pool_ids = (
                (ctx.eval_records, ctx.eval_ids) if ctx.eval_records else (train_records, ctx.train_ids)
            )
            n = cfg.train.num_samples
            run.write_samples(sample_scored(ctx, pool_records[:n], pool_ids[:n], seed=cfg.train.seed))
        return run.complete(summary)
