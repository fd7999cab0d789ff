"""EleutherAI lm-evaluation-harness on each policy's final model (``EvalConfig.lm_eval``).

lm-eval's ``hf`` model loads ``pretrained=<folder>`` with transformers, so it needs a plain Hugging
Face folder. A full-weights ``final/`` is one and is passed as is. A LoRA stage's ``final/`` holds
only an adapter whose base is a preset (``smollm2-135m``, ``tiny``) or another stage's adapter
(PPO on the merged SFT model): lm-eval's ``peft=`` argument would need that base as a
transformers folder, which it is not, so the adapter is merged into its base by alignlab's loader
(the same model eval samples from) and saved to a temporary folder that is deleted afterwards.

No network: the harness runs with ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` set, so a task whose
data is not in the local Hugging Face cache fails, and that failure becomes one line naming the
task, the policy and what is missing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from alignlab.errors import AlignlabError, ConfigError

OFFLINE_ENV = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


# (module, attribute) that hold the offline switches once a library is imported: they read the
# environment only at import time, and transformers (hence huggingface_hub) is imported by then
OFFLINE_FLAGS = (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_DATASETS_OFFLINE"))


@contextlib.contextmanager
def offline():
    """Hugging Face libraries told not to download: the variables for libraries not yet imported,
    the modules' own flags for those that are (everything restored afterwards)."""
    import importlib
    import sys

    old = {k: os.environ.get(k) for k in OFFLINE_ENV}
    os.environ.update({k: "1" for k in OFFLINE_ENV})
    flags = []
    for module, name in OFFLINE_FLAGS:
        if module.split(".")[0] in sys.modules:
            try:
                mod = importlib.import_module(module)
            except ImportError:
                continue
            if hasattr(mod, name):
                flags.append((mod, name, getattr(mod, name)))
                setattr(mod, name, True)
    try:
        yield
    finally:
        for mod, name, value in flags:
            setattr(mod, name, value)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def require_lm_eval(tasks: Sequence[str]):
    """The ``lm_eval`` module, or a ConfigError saying it is missing (checked before any sampling)."""
    try:
        with offline():
            import lm_eval
    except ImportError:
        raise ConfigError(
            f"eval.lm_eval ({', '.join(tasks)}): lm-evaluation-harness is not installed; pip install lm-eval"
            " (and have the tasks' data in the local Hugging Face cache), or set lm_eval=[] to skip it"
        ) from None
    if not callable(getattr(lm_eval, "simple_evaluate", None)):
        raise ConfigError("eval.lm_eval: this lm_eval has no simple_evaluate; pip install 'lm-eval>=0.4'")
    return lm_eval


@contextlib.contextmanager
def hf_folder(folder: Path, *, seed: int = 0):
    """A plain Hugging Face folder for ``folder``: itself, or its LoRA adapter merged (temporary)."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        yield folder
        return
    from alignlab.config import ModelConfig, from_dict
    from alignlab.models.load import load_model, save_pretrained

    loaded = load_model(
        from_dict(ModelConfig, {"name_or_path": str(folder), "device": "cpu"}), seed=seed, for_training=False
    )
    with tempfile.TemporaryDirectory(prefix="alignlab-lm-eval-") as tmp:
        save_pretrained(loaded.model, loaded.tokenizer, Path(tmp))
        del loaded
        yield Path(tmp)


def _numbers(task_result: dict) -> dict:
    return {k: float(v) for k, v in task_result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_lm_eval(
    folders: dict[str, Path],
    tasks: Sequence[str],
    *,
    limit: int | None = None,
    device: str = "cpu",
    batch_size: int = 8,
    seed: int = 0,
    log=None,
) -> dict:
    """``{"tasks", "limit", "results": {policy: {task: {metric: value}}}}`` (lm-eval's numeric metrics,
    e.g. ``acc,none`` and ``acc_stderr,none``) for each policy folder."""
    lm_eval = require_lm_eval(tasks)
    results = {}
    for name, folder in folders.items():
        with hf_folder(folder, seed=seed) as path, offline():
            if log is not None:
                log.info("lm-eval %s on %s (%s)", ",".join(tasks), name, path)
            try:
                out = lm_eval.simple_evaluate(
                    model="hf",
                    model_args={"pretrained": str(path)},
                    tasks=list(tasks),
                    limit=limit,
                    batch_size=batch_size,
                    device=device,
                    random_seed=seed,
                    numpy_random_seed=seed,
                    torch_random_seed=seed,
                )
            except Exception as e:  # noqa: BLE001 - any harness failure becomes one actionable line
                first = (str(e).strip().splitlines() or [""])[0][:300]
                raise AlignlabError(
                    f"eval.lm_eval: lm-evaluation-harness could not run {', '.join(tasks)} on {name} ({folder}): "
                    f"{type(e).__name__}: {first} (no network here: each task's dataset must already be in the "
                    "local Hugging Face datasets cache)"
                ) from None
        found = (out or {}).get("results") or {}
        if not found:  # a group task (mmlu) reports its subtasks under their own names, so only none is wrong
            raise AlignlabError(f"eval.lm_eval: lm-evaluation-harness returned no result for {', '.join(tasks)}")
        results[name] = {task: _numbers(found[task]) for task in found}
    return {"tasks": list(tasks), "limit": limit, "results": results}
