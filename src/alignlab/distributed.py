"""Several processes (torchrun): the process group, data parallelism (DDP, FSDP2, ZeRO), rank-0 writes.

A stage runs in several processes when launched by ``torchrun`` (``alignlab <stage> --num-processes N``
re-executes itself under ``python -m torch.distributed.run --standalone``). Every process runs the
same code on the same data order; :func:`alignlab.trainers.loop.fit` gives each one its slice of
every micro-batch (``indices[rank::world]``), so the *global* batch is the one-process batch, and
weighs each slice by the global count of its units (tokens, pairs: ``batch["loss_weight"]``). The
gradient is then that of the one-process run, whatever the number of processes.

Strategies (``train.strategy``):

* ``ddp``: torch's ``DistributedDataParallel``; each process holds the whole model, gradients are
  all-reduced (averaged) during backward.
* ``fsdp2``: torch's ``fully_shard`` (FSDP2); parameters, gradients and AdamW's state are sharded
  across processes at rest (DTensors); a step gathers the whole model (one group: alignlab runs the
  trunk and the LM head separately, so per-layer groups are not used yet) and reduce-scatters the
  gradients. Checkpoints and the final folder hold full, unsharded weights (gathered first), in
  the same format as a one-process run's.
* ``zero2`` / ``zero3``: DeepSpeed's ZeRO stage 2 (AdamW's state and gradients partitioned) or 3
  (parameters too), when deepspeed is installed; the engine runs backward and the optimizer step
  (:mod:`alignlab.deepspeed_strategy`).

All wrap a small module whose ``forward`` is the stage's ``step_fn``: the stage's code calls the
model's trunk and head itself, so the wrapper's hooks must sit around the whole step.

Only rank 0 writes files (config, log, metrics, checkpoints, final, COMPLETE); the others wait at
barriers. Light: torch is imported inside functions, so ``import alignlab`` stays cheap.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext

from alignlab.errors import ConfigError

STRATEGIES = ("ddp", "fsdp2", "zero2", "zero3")
STAGES = ("sft", "reward", "dpo", "ppo", "rloo", "grpo")  # stages that run on several processes


# ----------------------------------------------------------------------------- the process group
def world_size() -> int:
    """Number of processes, as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True in the process that writes files (rank 0, or the only process)."""
    return rank() == 0


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"'train.strategy' must be one of {', '.join(STRATEGIES)}; got {strategy!r}")


def setup(stage: str) -> None:
    """Join the process group that torchrun describes (gloo on CPU, nccl on GPU); nothing in one process."""
    if world_size() == 1:
        return
    if stage not in STAGES:
        raise ConfigError(
            f"stage {stage!r} does not run on several processes yet (WORLD_SIZE={world_size()}); "
            f"{', '.join(STAGES)} do: run it in one process"
        )
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # model.device=auto then means this GPU
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def active() -> bool:
    """A process group of more than one process is initialised."""
    if world_size() == 1:
        return False
    import torch.distributed as dist

    return dist.is_initialized()


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def _device():
    import torch
    import torch.distributed as dist

    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum over processes (float64); the values themselves in one process."""
    if not active():
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def all_true(flag: bool) -> bool:
    """True when ``flag`` is true in every process (e.g. every process's loss is finite)."""
    if not active():
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def weighted_mean_stats(acc: list[tuple[float, dict]]) -> dict:
    """Mean of each stat over every process's micro-batches, weighted like the loss.

    ``acc`` holds this process's ``(weight, stats)``; every process has the same keys (the same
    stage code). Where the weights of a stat sum to 0, the unweighted mean over micro-batches.
    """
    keys = list(acc[0][1])
    flat = []
    for key in keys:
        pairs = [(w, float(s[key])) for w, s in acc if key in s]
        flat += [sum(w * v for w, v in pairs), sum(w for w, _ in pairs), sum(v for _, v in pairs), len(pairs)]
    flat = all_reduce_sum(flat)
    out = {}
    for i, key in enumerate(keys):
        wv, w, v, n = flat[4 * i : 4 * i + 4]
        out[key] = wv / w if w > 0 else v / max(n, 1)
    return out


# ----------------------------------------------------------------------------- the wrapped step
def _step_module(step_fn):
    import torch

    class Step(torch.nn.Module):
        """The stage's ``step_fn`` as a module, so DDP / FSDP2 hooks run around the whole step."""

        def __init__(self):
            super().__init__()
            self.step_fn = step_fn

        def forward(self, batch):
            return self.step_fn(batch)

    return Step()


class DataParallel:
    """One stage's model trained by several processes: ``forward(batch)`` runs ``step_fn`` wrapped.

    ``params`` are the parameters to train (with FSDP2, the sharded ones that replace them): the
    model's, and those of ``extra`` (a module trained beside it, e.g. a value head), wrapped with it.
    ``optimizer`` is ``make_optimizer(params)`` when given (ZeRO needs it: its engine takes the loop's
    AdamW over); with ZeRO the engine also does backward and the step (``engine_steps``).
    """

    def __init__(
        self, model, params: list, step_fn, strategy: str, *, make_optimizer=None, max_grad_norm=0.0, extra=None
    ):
        import torch

        check_strategy(strategy)
        self.model, self.strategy, self.world, self.rank = model, strategy, world_size(), rank()
        self.zero = None  # the DeepSpeed engine's owner under zero2 / zero3
        step = _step_module(step_fn)
        if extra is not None and len(extra):
            step.extra = extra  # modules trained beside the model (a value head): wrapped with it
        if strategy in ("zero2", "zero3"):
            from alignlab import deepspeed_strategy

            step.model = model
            self.params = params
            if make_optimizer is None:
                raise ValueError(f"train.strategy={strategy}: DataParallel needs make_optimizer")
            self.zero = deepspeed_strategy.Zero(
                step,
                make_optimizer(params),
                stage=deepspeed_strategy.ZERO_STAGES[strategy],
                max_grad_norm=max_grad_norm,
            )
            self.engine = self.zero.engine
        elif strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            step.params = torch.nn.ParameterList(params)  # the same Parameter objects as the model's
            device = params[0].device
            # broadcast_buffers=False: buffers (rotary tables) are the same everywhere, and a forward
            # pass outside the step (eval, sampling) then needs no collective
            self.engine = DistributedDataParallel(
                step, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
            )
            self.params = params
        else:
            from torch.distributed.fsdp import fully_shard

            step.model = model
            name_of = {id(p): n for n, p in step.named_parameters(remove_duplicate=False)}
            names = [name_of[id(p)] for p in params]
            fully_shard(step)  # replaces every parameter of the model by a DTensor shard
            by_name = dict(step.named_parameters(remove_duplicate=False))
            self.engine = step
            self.params = [by_name[n] for n in names]
        if self.zero is not None:
            self.optimizer = self.zero.optimizer
        else:
            self.optimizer = make_optimizer(self.params) if make_optimizer is not None else None
        self.engine_steps = self.zero is not None  # the engine clips and steps (see step())
        self._gathered: list | None = None

    def describe(self) -> str:
        import torch.distributed as dist

        wrapped = (
            self.zero.describe()
            if self.zero is not None
            else f"wrapper={type(self.engine).__name__} param_type={type(self.params[0].data).__name__}"
        )
        return (
            f"distributed: world_size={self.world} rank={self.rank} backend={dist.get_backend()} "
            f"strategy={self.strategy} {wrapped}"
        )

    def forward(self, batch):
        return self.engine(batch)

    def sync(self, enabled: bool):
        """Context for one micro-batch's forward and backward: gradients are reduced only when ``enabled``
        (the step's last micro-batch); the others accumulate locally. ZeRO: the engine reduces as it goes."""
        if enabled or self.zero is not None:
            return nullcontext()
        if self.strategy == "ddp":
            return self.engine.no_sync()
        return _fsdp_no_sync(self.engine)

    def backward(self, loss, finite: bool = True) -> None:
        """Backward of one micro-batch's (weighted) loss; ``finite``: every process's loss is finite."""
        if self.zero is not None:
            self.zero.backward(loss, finite)
        else:
            loss.backward()

    def step(self, finite: bool):
        """ZeRO only (``engine_steps``): clip, step and clear the gradients; (norm before clipping, stepped)."""
        return self.zero.step(finite)

    # ------------------------------------------------------------------ full weights (FSDP2)
    @contextmanager
    def full_params(self):
        """Inside: the model holds plain, full parameters (FSDP2 gathers them; DDP already does).

        For evaluation and saving. Every process must enter it (it gathers); the trained state stays
        the sharded one, so writes to these parameters inside are lost. ZeRO-3 gathers the same way.
        """
        if self.zero is not None:
            with self.zero.gathered():
                yield
            return
        if self.strategy != "fsdp2" or self._gathered is not None:
            yield
            return
        swapped = self._gather()
        try:
            yield
        finally:
            for module, name, sharded in swapped:
                module._parameters[name] = sharded

    def finish(self) -> None:
        """After training: leave the model with its full parameters, so the stage's own code (sampling,
        saving the final folder) uses it like a one-process model."""
        if self.zero is not None:
            self.zero.finish()
        elif self.strategy == "fsdp2" and self._gathered is None:
            self._gathered = self._gather()

    def _gather(self) -> list:
        import torch
        from torch.distributed.tensor import DTensor

        # FSDP's state-dict hooks put the shards back unless its group is in the sharded state
        self.engine.reshard()
        full: dict[int, torch.nn.Parameter] = {}
        swapped = []
        for module in self.engine.modules():
            for name, p in list(module._parameters.items()):
                if isinstance(p, DTensor):
                    if id(p) not in full:  # tied weights stay tied
                        full[id(p)] = torch.nn.Parameter(p.full_tensor().detach(), requires_grad=p.requires_grad)
                    swapped.append((module, name, p))
                    module._parameters[name] = full[id(p)]
        return swapped

    # ------------------------------------------------------------------ optimizer state in checkpoints
    def optimizer_state(self, optimizer):
        """An object with ``state_dict``/``load_state_dict`` that checkpoints can use for ``optimizer``.

        DDP: the optimizer itself (every process holds the whole state). FSDP2 and ZeRO: the full state,
        in the one-process format (parameters by index), gathered on rank 0 by ``gather()``.
        """
        if self.zero is not None:
            return self.zero.optimizer_state()
        if self.strategy == "ddp":
            return optimizer
        return FullOptimizerState(self.engine, optimizer)


@contextmanager
def _fsdp_no_sync(module):
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


class FullOptimizerState:
    """FSDP2's sharded AdamW state as one full state dict in the one-process format (index keys)."""

    def __init__(self, engine, optimizer):
        self.engine, self.optimizer, self._state = engine, optimizer, None

    def _options(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def gather(self) -> None:
        """Collective: every process calls it; rank 0 then holds the full state."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        sd = get_optimizer_state_dict(self.engine, self.optimizer, options=self._options())
        self._state = _by_index(sd) if sd else {}

    def state_dict(self) -> dict:
        if self._state is None:
            raise RuntimeError("FullOptimizerState.gather() must run in every process before state_dict()")
        return self._state

    def load_state_dict(self, state: dict) -> None:
        """Collective: every process loads the same full state (read from the checkpoint)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = {id(p): n for n, p in self.engine.named_parameters()}
        order = [names[id(p)] for g in self.optimizer.param_groups for p in g["params"]]
        by_name = {
            "state": {order[int(i)]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]} for g in state["param_groups"]],
        }
        set_optimizer_state_dict(self.engine, self.optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def _by_index(sd: dict) -> dict:
    """A state dict keyed by parameter names -> keyed by position, as ``optimizer.state_dict()`` gives."""
    index: dict[str, int] = {}
    groups = []
    for g in sd["param_groups"]:
        ids = []
        for name in g["params"]:
            index.setdefault(name, len(index))
            ids.append(index[name])
        groups.append({**g, "params": ids})
    return {"state": {index[k]: v for k, v in sd["state"].items()}, "param_groups": groups}


# ----------------------------------------------------------------------------- the launcher
def launch(argv: list[str], num_processes: int) -> int:
    """Run ``alignlab <argv>`` in ``num_processes`` processes on this machine through torchrun."""
    import subprocess
    import sys

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={num_processes}",
        "-m",
        "alignlab",
        *argv,
    ]
    print(f"alignlab: launching {num_processes} processes: {' '.join(cmd)}", file=sys.stderr)
    return subprocess.call(cmd)


def strip_launch_flags(argv: list[str]) -> list[str]:
    """``argv`` without ``--num-processes N`` (or ``--num-processes=N``): what each process runs."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--num-processes":
            skip = True
        elif not a.startswith("--num-processes="):
            out.append(a)
    return out


# ----------------------------------------------------------------------------- gathering
def all_gather_object(obj) -> list:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    if not active():
        return [obj]
    import torch.distributed as dist

    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_gather_rows(t):
    """Every process's ``t`` ``(n_r, ...)`` in rank order, as a list of tensors (``n_r`` may differ; the
    trailing dimensions must not). Detached: no gradient flows back through the gather."""
    if not active():
        return [t.detach()]
    import torch
    import torch.distributed as dist

    counts = [int(c) for c in all_reduce_sum([float(len(t)) if r == rank() else 0.0 for r in range(world_size())])]
    width = max(counts)
    padded = torch.zeros((width, *t.shape[1:]), dtype=t.dtype, device=_device())
    padded[: len(t)] = t.detach().to(padded.device)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return [p[:n].to(t.device) for p, n in zip(parts, counts)]
