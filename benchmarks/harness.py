"""What every benchmark here does the same way: run one training in its own process, time its
optimizer steps, read its peak memory, describe the machine, write the figures to a file.

Each measured run is a fresh child process (``<script> --worker <spec.json>``) started with the
peer environment's Python (``benchmarks/.envs/trl``, made by ``setup_peers.sh``), so alignlab and
the peer framework run on the same torch, transformers and peft builds. Peak memory is the
child's maximum resident set size as the kernel accounts it (``wait4``'s ``ru_maxrss`` for that
one child; the child's own ``VmHWM`` is recorded too as a cross-check).

Timing: a global optimizer post-step hook (``torch.optim.optimizer.register_optimizer_step_post_hook``)
stamps the wall clock after every optimizer step, whichever framework owns the optimizer. The
timed window runs from the end of the last warm-up step to the end of the last step, so it
covers everything a training step costs (collation, forward, backward, clipping, optimizer,
scheduler, logging) and nothing before the loop (imports, model load, tokenisation) or after it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
# the peer environment; ALIGNLAB_PEER_ENV points at another checkout's (e.g. from a git worktree)
PEER_ENV = Path(os.environ.get("ALIGNLAB_PEER_ENV", BENCH / ".envs" / "trl"))


# ----------------------------------------------------------------------------- environment
def peer_python() -> str:
    py = PEER_ENV / "bin" / "python"
    if not py.is_file():
        sys.exit(f"{py}: the benchmark environment is missing; run `bash benchmarks/setup_peers.sh` first")
    return str(py)


def versions(python: str) -> dict:
    """Versions of the libraries both frameworks run on, read in the peer environment."""
    code = (
        "import importlib.metadata as m, json, torch\n"
        "names = ['torch', 'trl', 'transformers', 'peft', 'accelerate', 'datasets', 'alignlab']\n"
        "out = {}\n"
        "for n in names:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = None\n"
        "out['torch_cuda'] = torch.version.cuda\n"
        "print(json.dumps(out))\n"
    )
    out = json.loads(subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout)
    out["python"] = platform.python_version()
    out["alignlab_commit"] = _git(["rev-parse", "--short", "HEAD"])
    dirty = _git(["status", "--porcelain", "--", "src"])
    out["alignlab_worktree"] = "modified (uncommitted changes under src/)" if dirty else "clean"
    return out


def _git(args: list[str]) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": mem_gib, "platform": platform.platform()}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_busy_s() -> float:
    """Machine-wide busy CPU seconds since boot (all cores), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return float("nan")
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def merge(base: dict, extra: dict) -> dict:
    """``base`` updated by ``extra``, nested dicts merged key by key."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ----------------------------------------------------------------------------- child runs
def run_worker(script: Path, spec: dict, *, threads: int, timeout: float, sample_rss: bool = False) -> dict:
    """Run ``script --worker`` on ``spec`` in a fresh peer-env process; its report plus peak memory.

    The child writes its report (a JSON object) to ``spec["out"]``; :func:`run_command` adds the
    process figures (``max_rss_mib``, ``wall_s``, load) to it.
    """
    with tempfile.TemporaryDirectory(prefix="alignlab-bench-") as tmp:
        tmp = Path(tmp)
        spec = {**spec, "out": str(tmp / "report.json"), "workdir": str(tmp / "work"), "threads": threads}
        (tmp / "spec.json").write_text(json.dumps(spec))
        proc = run_command(
            [peer_python(), str(script), "--worker", str(tmp / "spec.json")],
            threads=threads,
            timeout=timeout,
            tmp=tmp,
            name=spec.get("name", ""),
            sample_rss=sample_rss,
        )
        if not Path(spec["out"]).is_file():
            raise RuntimeError(f"worker wrote no report: {spec.get('name')}\n{proc['log_tail']}")
        report = json.loads(Path(spec["out"]).read_text())
    proc.pop("log_tail")
    return {**report, **proc}


def bench_env(threads: int, tmp: Path) -> dict:
    """The environment of every measured child: thread counts, offline Hugging Face, no telemetry."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_DISABLED="true",
        HF_DATASETS_CACHE=str(tmp / "hf-datasets"),
        PYTHONWARNINGS="ignore",
    )
    return env


def _rss_mib(pid: int, fields: tuple[str, ...] = ("VmRSS",)) -> float | list[float] | None:
    """``pid``'s resident memory in MiB from /proc/<pid>/status: one field, or a list of ``fields``."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    found = {line.split(":")[0]: round(int(line.split()[1]) / 1024, 1) for line in lines if line.startswith(fields)}
    values = [found.get(f) for f in fields]
    return values[0] if len(fields) == 1 else values


def run_command(
    argv: list[str],
    *,
    threads: int,
    timeout: float,
    tmp: Path,
    name: str = "",
    cwd: Path = ROOT,
    env: dict | None = None,
    sample_rss: bool = False,
) -> dict:
    """Run ``argv`` as one measured child process (see :func:`bench_env`) and return its process figures.

    ``max_rss_mib`` (this child's ``ru_maxrss``), ``wall_s`` (the whole process), ``cpu_s``, the load
    average just before the start, ``other_load_cores`` (how many cores' worth of CPU the rest of
    the machine used on average during the run, from /proc/stat minus this child),
    with ``sample_rss`` ``rss_samples`` (``[seconds since start, VmRSS, RssAnon, RssFile]`` in MiB every
    0.25 s: anonymous memory apart from mapped files), and ``log_tail``. Raises
    on a non-zero exit or a timeout.
    """
    env = {**bench_env(threads, tmp), **(env or {})}
    log_path = tmp / "child.log"
    load_before = loadavg()
    busy0 = cpu_busy_s()
    t0, epoch0 = time.perf_counter(), time.time()
    samples = []
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss = _rss_mib(proc.pid, ("VmRSS", "RssAnon", "RssFile")) if sample_rss else None
            if rss is not None and rss[0] is not None:  # (an exiting process has no VmRSS)
                samples.append([round(time.perf_counter() - t0, 2), *rss])
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"timed out after {timeout:.0f} s: {name}\n{tail}")
            time.sleep(0.25)
        returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    busy = cpu_busy_s() - busy0
    tail = log_path.read_text(errors="replace")[-4000:]
    if returncode != 0:
        raise RuntimeError(f"failed (exit {returncode}): {name}\n{tail}")
    child_cpu = usage.ru_utime + usage.ru_stime
    return {
        "max_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
        "wall_s": round(wall, 2),
        "started_at": epoch0,  # time.time() at the start: log lines' clock times minus this = seconds into the run
        "started_perf": t0,  # perf_counter() at the start (a system-wide monotonic clock: the child's stamps minus this)
        "loadavg_before": load_before,
        "cpu_s": round(child_cpu, 2),
        # cores kept busy by everything else on the machine while this run went on (other users' jobs)
        "other_load_cores": round(max(0.0, busy - child_cpu) / wall, 2) if wall > 0 else None,
        **({"rss_samples": samples} if sample_rss else {}),
        "log_tail": tail,
    }


def read_spec(path: str) -> dict:
    spec = json.loads(Path(path).read_text())
    threads = int(spec["threads"])
    import torch

    torch.set_num_threads(threads)
    Path(spec["workdir"]).mkdir(parents=True, exist_ok=True)
    return spec


def write_report(spec: dict, report: dict) -> None:
    report["vmhwm_mib"] = vmhwm_mib()
    Path(spec["out"]).write_text(json.dumps(report))


def vmhwm_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


class StepClock:
    """Wall-clock and process CPU-time stamps after every optimizer step of any ``torch.optim.Optimizer``."""

    def __init__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.stamps: list[float] = []
        self.cpu_stamps: list[float] = []
        self.rss_mib: list[float | None] = []  # this process's VmRSS right after each step
        self._handle = register_optimizer_step_post_hook(self._hook)

    def _hook(self, optimizer, args, kwargs) -> None:
        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.process_time())  # all threads of this process
        self.rss_mib.append(_rss_mib(os.getpid()))

    def close(self) -> None:
        self._handle.remove()

    def as_dict(self) -> dict:
        return {"stamps": self.stamps, "cpu_stamps": self.cpu_stamps, "rss_after_step_mib": self.rss_mib}


def cli_worker(spec: dict) -> dict:
    """Run the ``alignlab`` command (``alignlab.cli.main``) on ``spec["argv"]`` with a :class:`StepClock`.

    The same code path as typing ``alignlab <argv>``; the clock only stamps each optimizer step.
    ``start`` is the clock at the process's first line of benchmark code (before alignlab is imported).
    """
    start = time.perf_counter()
    clock = StepClock()
    from alignlab.cli import main

    code = main(list(spec["argv"]))
    clock.close()
    if code:
        raise SystemExit(f"alignlab {' '.join(spec['argv'])} exited with {code}")
    return {**clock.as_dict(), "start": start, "end": time.perf_counter()}


def timing(report: dict, warmup: int, work: list[float]) -> dict:
    """Rates over the timed steps of one run; ``work[k]`` is what step k+1 processed (tokens, or 1 step).

    * ``rate``: total work of the timed steps / their wall seconds (the headline figure);
    * ``rate_step_median``: the median over timed steps of work_k / seconds_k (robust to a step
      that another process on the machine slowed down);
    * ``rate_per_cpu_s``: total work / process CPU seconds (all threads) in the window: less
      sensitive to other load on the machine, but it counts spin-waiting threads too.
    """
    stamps, cpu = report["stamps"], report["cpu_stamps"]
    if len(stamps) != len(work):
        raise RuntimeError(f"{len(stamps)} optimizer steps were seen, {len(work)} were planned")
    if len(stamps) <= warmup:
        raise RuntimeError(f"only {len(stamps)} steps; need more than the {warmup} warm-up step(s)")
    step_s = [b - a for a, b in zip(stamps[warmup - 1 : -1], stamps[warmup:])]
    timed = work[warmup:]
    wall = stamps[-1] - stamps[warmup - 1]
    cpu_s = cpu[-1] - cpu[warmup - 1]
    return {
        "timed_s": wall,
        "timed_cpu_s": cpu_s,
        "step_s": step_s,
        "rate": sum(timed) / wall,
        "rate_step_median": statistics.median(w / s for w, s in zip(timed, step_s)),
        "step_rates": [w / s for w, s in zip(timed, step_s)],
        "rate_per_cpu_s": sum(timed) / cpu_s if cpu_s > 0 else None,
    }


# ----------------------------------------------------------------------------- figures
def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs: list[dict], key: str, *, peers: list[str], lower_is_better: bool = False) -> dict:
    """Medians of ``key`` per framework, and alignlab's ratio to the best peer by that measure."""
    by = {}
    for r in runs:
        by.setdefault(r["framework"], []).append(r[key])
    med = {fw: median(v) for fw, v in by.items()}
    peer_meds = {fw: med[fw] for fw in peers if med.get(fw) is not None}
    best = None
    if peer_meds:
        best = (min if lower_is_better else max)(peer_meds, key=peer_meds.get)
    ours = med.get("alignlab")
    return {
        "medians": med,
        "all": by,
        "best_peer": best,
        "ours": ours,
        "peer": peer_meds.get(best),
        "ratio": (ours / peer_meds[best]) if (best and ours is not None and peer_meds[best]) else None,
    }


def pooled_median(runs: list[dict], key: str, *, peers: list[str]) -> dict:
    """Like :func:`summarise` for a per-step list (``key``), pooling every timed step of every run."""
    by = {}
    for r in runs:
        by.setdefault(r["framework"], []).extend(r[key])
    med = {fw: median(v) for fw, v in by.items()}
    peer_meds = {fw: med[fw] for fw in peers if med.get(fw) is not None}
    best = max(peer_meds, key=peer_meds.get) if peer_meds else None
    ours = med.get("alignlab")
    return {
        "medians": med,
        "best_peer": best,
        "ours": ours,
        "peer": peer_meds.get(best),
        "ratio": (ours / peer_meds[best]) if (best and ours is not None and peer_meds[best]) else None,
    }


def result_header(benchmark: str, threads: int) -> dict:
    """What every results file starts with: the benchmark, date, machine, versions, load, threads, command."""
    return {
        "benchmark": benchmark,
        "date": now(),
        "loadavg_start": loadavg(),
        "machine": machine(),
        "versions": versions(peer_python()),
        "threads": threads,
        "command": " ".join(sys.argv),
    }


def add_run_args(p, *, output: str, peers: list[str], timeout: float = 900) -> None:
    """The arguments every whole-command benchmark takes (worker spec, TRL set-ups, repeats, threads, ...)."""
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--peers", default=",".join(peers), help="TRL set-ups, from " + ", ".join(peers))
    p.add_argument("--repeats", type=int, default=1, help="runs per set-up, alternating")
    p.add_argument("--threads", type=int, default=0, help="torch threads in every run (0: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=timeout, help="seconds one run may take")
    p.add_argument("--output", default=output, help="results/<output>.json")


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stage_config(cls, tree: dict) -> dict:
    """A benchmark's config tree checked as alignlab's stage config ``cls``, as a plain dict.

    ``auto`` checkpointing is resolved, so the results record what actually ran.
    """
    from alignlab.config import from_dict, to_dict, validate
    from alignlab.models.checkpointing import resolve_mode

    cfg = from_dict(cls, tree)
    validate(cfg)
    cfg.model.gradient_checkpointing = resolve_mode(cfg.model)
    return to_dict(cfg)


def trl_training_args(cfg, workdir: str, gradient_checkpointing: bool = False) -> dict:
    """TRL/transformers training arguments that mirror an alignlab stage config's loop settings.

    Same steps, batch, LR schedule, AdamW settings, clipping and seed; fp32 on CPU; rows read in
    the order given (alignlab's batch order). ``gradient_checkpointing``: transformers' own (full,
    per layer); it has no selective mode.
    """
    t = cfg.train
    return dict(
        output_dir=workdir,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.scheduler if t.scheduler != "constant" else "constant_with_warmup",
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_epsilon=t.adam_eps,
        max_grad_norm=t.max_grad_norm,
        bf16=False,
        fp16=False,
        gradient_checkpointing=gradient_checkpointing,
        use_cpu=True,
        seed=t.seed,
        train_sampling_strategy="sequential",
    )
