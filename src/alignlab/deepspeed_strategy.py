"""DeepSpeed ZeRO-2 and ZeRO-3 behind :class:`alignlab.distributed.DataParallel` (``train.strategy=zero2|zero3``).

The loop stays alignlab's: the same data split, the same loss weighting (each process's loss times
``W · w / Σw``), the same AdamW (``make_optimizer``) and LR schedule. What changes is who runs the
backward pass and the optimizer step: a DeepSpeed engine, which partitions AdamW's state and the
gradients across processes (ZeRO-2), and the parameters too (ZeRO-3). How alignlab maps onto it:

* **backward**: ``engine.backward(loss, scale_wrt_gas=False)``. ``managed_gradient_accumulation``
  is off, so DeepSpeed does not count micro-batches nor divide the loss by an accumulation count:
  the loop's own weights hold, and every ``engine.step()`` ends one accumulated step. DeepSpeed
  averages gradients over processes, as DDP does.
* **step**: ``engine.step()`` clips the global gradient norm to ``train.max_grad_norm`` (its
  ``gradient_clipping``; 0: none) and steps the loop's AdamW on this process's partition. It skips
  the step and clears the gradients when the norm is not finite (in float32 too), like
  :func:`alignlab.trainers.loop.clip_and_step`; a non-finite loss in any process is made into NaN
  gradients everywhere, so every process skips the same step.
* **ZeRO-3**: every parameter is registered as an "external parameter" of the step module, so
  DeepSpeed gathers the whole model when a step's forward starts, keeps it through backward and
  partitions it again at ``engine.step()`` (the stage's code uses the LM head's weight directly,
  which per-layer gathering would not see; a ZeRO-3 "leaf" module instead reduces its gradients in
  a backward hook that fires too early when the module's inputs need no gradient). Every
  parameter is partitioned at rest (no persistence threshold). Evaluation, checkpoints and the
  model after training see the gathered parameters (:meth:`Zero.gathered`).
* **checkpoints**: full weights and AdamW's state in the one-process format
  (:class:`FullZeroOptimizerState`), so a run resumes under ZeRO, under another strategy or in one
  process.

On CPU (gloo) DeepSpeed runs with ``DS_ACCELERATOR=cpu``; its shared-memory all-reduce, a C++ op
compiled on first use (about two minutes), is switched off: torch.distributed's gloo does the
reductions. Ranks and the process group come from torchrun and torch.distributed, not DeepSpeed.
``deepspeed`` is imported only here, inside functions.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from alignlab.errors import ConfigError

ZERO_STAGES = {"zero2": 2, "zero3": 3}  # train.strategy -> ZeRO stage
_HELD = -1  # a stand-in module id (DeepSpeed's are >= 0) that keeps gathered parameters gathered


def require():
    """The deepspeed module set up for alignlab, or a ConfigError that says how to install it."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed picks its accelerator
    try:
        import deepspeed
        import deepspeed.ops
    except ImportError:
        raise ConfigError(
            "train.strategy=zero2/zero3 needs the deepspeed package: pip install 'alignlab[deepspeed]'"
        ) from None
    # The shared-memory all-reduce for CPU is a C++ op compiled on first use (minutes); gloo does the job.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def engine_config(stage: int, max_grad_norm: float) -> dict:
    """DeepSpeed's config: ZeRO ``stage``, float32, alignlab's clipping; the loop owns accumulation."""
    from alignlab.distributed import world_size

    zero = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True}
    if stage == 3:
        # every parameter partitioned (the default keeps small ones whole on every process)
        zero.update(stage3_param_persistence_threshold=0, stage3_model_persistence_threshold=0)
    return {
        "train_micro_batch_size_per_gpu": 1,  # bookkeeping only: alignlab splits and weighs the batches
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size(),
        "managed_gradient_accumulation": False,  # backward() only accumulates; step() is the boundary
        "gradient_clipping": max_grad_norm,  # DeepSpeed's own default differs; 0: no clipping, as in alignlab
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class Zero:
    """A stage's step module and the loop's AdamW run by a DeepSpeed ZeRO engine."""

    def __init__(self, step_module, optimizer, *, stage: int, max_grad_norm: float):
        import logging

        deepspeed = require()
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.stage = stage
        # the loop's parameter groups (decay, no decay), before ZeRO replaces them by flat partitions
        self.groups = [list(g["params"]) for g in optimizer.param_groups]
        self.engine, zero_optimizer, _, _ = deepspeed.initialize(
            model=step_module, optimizer=optimizer, config=engine_config(stage, max_grad_norm), dist_init_required=False
        )
        self.zero_optimizer = zero_optimizer  # DeepSpeed's wrapper
        self.optimizer = optimizer  # the loop's AdamW, stepping this process's flat partitions
        if stage == 3:  # one group: the step's forward gathers everything; step() partitions it again
            for p in step_module.parameters():
                deepspeed.zero.register_external_parameter(step_module, p)
        self._kept = None  # finish(): the gathered parameters, kept

    def describe(self) -> str:
        """How much of the parameters and of AdamW's state this process holds (ZeRO-3: parameters partitioned)."""
        params = [p for g in self.groups for p in g]
        total = sum(_full_numel(p) for p in params)
        held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)
        opt = sum(t.numel() for i in range(len(self.groups)) for t in self.partitions(i))
        return (
            f"wrapper={type(self.engine).__name__} zero_stage={self.engine.zero_optimization_stage()} "
            f"params_held={held / total:.2f} optimizer_state_held={opt / total:.2f}"
        )

    def partitions(self, i: int) -> list:
        """This process's flat float32 partitions that AdamW steps for the loop's group ``i`` (ZeRO-3
        splits a group into sub-groups and puts each in AdamW's group only while stepping it)."""
        z = self.zero_optimizer
        if self.stage == 3:
            return [t for j, t in enumerate(z.fp32_partitioned_groups_flat) if z.sub_group_to_group_id[j] == i]
        return list(self.optimizer.param_groups[i]["params"])

    def backward(self, loss, finite: bool) -> None:
        if not finite:  # some process's loss is not finite: NaN gradients everywhere, so every process skips
            loss = loss * float("nan")
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self, finite: bool):
        """Clip, step and clear the gradients (skipped when their norm is not finite); (norm, stepped)."""
        import math

        import torch

        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        norm = float("nan") if norm is None else float(norm)
        return torch.tensor(norm), finite and math.isfinite(norm) and self.engine.was_step_applied()

    # ------------------------------------------------------------------ full weights (ZeRO-3)
    @contextmanager
    def gathered(self):
        """Inside: the model's parameters hold their full values (ZeRO-3 gathers them; collective)."""
        import deepspeed

        if self.stage != 3 or self._kept is not None:
            yield
            return
        params = list(self.engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            # a forward outside a step (evaluation, sampling) runs ZeRO-3's per-module hooks, which
            # partition a parameter again after its module unless some module still counts as using it
            for p in params:
                p.ds_active_sub_modules.add(_HELD)
            try:
                yield
            finally:
                for p in params:
                    p.ds_active_sub_modules.discard(_HELD)

    def finish(self) -> None:
        """After training: the model keeps its full parameters (sampling, the final folder)."""
        if self.stage == 3 and self._kept is None:
            kept = self.gathered()
            kept.__enter__()
            self._kept = kept

    def optimizer_state(self) -> FullZeroOptimizerState:
        return FullZeroOptimizerState(self)


def _full_numel(p) -> int:
    return p.ds_numel if hasattr(p, "ds_numel") else p.numel()


class FullZeroOptimizerState:
    """ZeRO's partitioned AdamW state as one full state dict in the one-process format (index keys).

    The one-process format is ``make_optimizer``'s AdamW ``state_dict()``: its groups in order, the
    parameters numbered through the groups, each with ``step``, ``exp_avg`` and ``exp_avg_sq``.
    ZeRO-3: through DeepSpeed's ``safe_get/set_full_optimizer_state``. ZeRO-2: through each
    parameter's fragment address in its group's flat partition (DeepSpeed's own accessors for
    ZeRO-2 link the fragments once, after the first group's first step, so with two groups the
    second group's state is not found).
    """

    KEYS = ("exp_avg", "exp_avg_sq")

    def __init__(self, zero: Zero):
        self.zero, self._state = zero, None

    def _fragment(self, i: int, p, key: str):
        """ZeRO-2: (this process's slice of ``p``'s state ``key``, its start and length in ``p`` flattened),
        or None when this process's partition holds no element of ``p``."""
        m = p._hp_mapping
        if m is None:
            return None
        state = self.zero.optimizer.state[self.zero.partitions(i)[0]][key]
        part = state.narrow(0, m.hp_fragment_address.start, m.hp_fragment_address.numel)
        return part, m.lp_fragment_address.start, m.lp_fragment_address.numel

    def _get(self, i: int, p, key: str):
        """The full state ``key`` of parameter ``p`` (collective)."""
        import torch
        import torch.distributed as dist
        from deepspeed.utils import safe_get_full_optimizer_state

        if self.zero.stage == 3:
            return safe_get_full_optimizer_state(p, key).reshape(p.ds_shape)
        full = torch.zeros(p.numel(), dtype=torch.float32, device=p.device)
        fragment = self._fragment(i, p, key)
        if fragment is not None:
            part, start, numel = fragment
            full.narrow(0, start, numel).copy_(part)
        dist.all_reduce(full)  # each element is held by one process; the others add 0
        return full.view(p.shape)

    def _set(self, i: int, p, key: str, value) -> None:
        from deepspeed.utils import safe_set_full_optimizer_state

        if self.zero.stage == 3:
            if p.ds_numel % p.ds_process_group.size() == 0:
                safe_set_full_optimizer_state(p, value, key)
            else:  # deepspeed 0.19.8 reads past the end of the last, padded partition (e.g. a bias of size 1)
                self._set_padded_z3(p, key, value)
            return
        fragment = self._fragment(i, p, key)
        if fragment is not None:
            part, start, numel = fragment
            part.copy_(value.flatten().narrow(0, start, numel))

    @staticmethod
    def _set_padded_z3(p, key: str, value) -> None:
        """ZeRO-3: this process's partition of ``p``'s state ``key`` from the full ``value``; the
        partition's elements past the parameter's end (padding) are zero, as DeepSpeed creates them."""
        opt = p._z3_optimizer
        part, _ = opt._get_fp32_opt_state_partition(p, release_swap_buffers=False, optim_state_key=key)
        n = part.numel()
        mine = value.flatten()[n * opt._get_param_partition_rank(p) :][:n]
        part.data.zero_()
        part.data[: mine.numel()].copy_(mine)

    def gather(self) -> None:
        """Collective: every process calls it; rank 0 then holds the full state."""
        from alignlab.distributed import is_main

        opt = self.zero.optimizer
        state, groups, index = {}, [], 0
        for i, params in enumerate(self.zero.groups):
            inner = [opt.state[t] for t in self.zero.partitions(i) if opt.state.get(t)]
            ids = list(range(index, index + len(params)))
            for k, p in zip(ids, params) if inner else ():  # no step yet: AdamW creates its state lazily
                full = {key: self._get(i, p, key) for key in self.KEYS}
                if is_main():
                    state[k] = {"step": inner[0]["step"].clone()}
                    state[k].update({key: v.detach().cpu().clone() for key, v in full.items()})
            groups.append({**{k: v for k, v in opt.param_groups[i].items() if k != "params"}, "params": ids})
            index += len(params)
        self._state = {"state": state, "param_groups": groups}

    def state_dict(self) -> dict:
        if self._state is None:
            raise RuntimeError("FullZeroOptimizerState.gather() must run in every process before state_dict()")
        return self._state

    def load_state_dict(self, state: dict) -> None:
        """Collective: every process loads the same full state (read from the checkpoint)."""
        import torch

        opt = self.zero.optimizer
        for i, (params, saved) in enumerate(zip(self.zero.groups, state["param_groups"])):
            opt.param_groups[i].update({k: v for k, v in saved.items() if k != "params"})
            rows = [state["state"].get(k) for k in saved["params"]]
            if not rows or rows[0] is None:
                continue
            for t in self.zero.partitions(i):  # AdamW's state for the flat partitions, filled below
                opt.state[t] = {"step": rows[0]["step"].clone(), **{key: torch.zeros_like(t) for key in self.KEYS}}
            for p, row in zip(params, rows):
                for key in self.KEYS:
                    self._set(i, p, key, row[key].to(torch.float32))
