"""Model calls behind the web app: sampling from π_ref, scoring, side-by-side answers.

The app talks to a :class:`Backend`; tests hand it a fake one (fixed responses, no model), and
:class:`ModelBackend` is the real path: it loads ``<run>/<stage>/final`` with
``alignlab.models.load.load_model`` and samples with ``alignlab.rollout.generate.TransformersEngine``,
importing torch only inside its methods. Every backend call runs on :class:`ModelQueue`'s single
worker thread, so one slow generation never blocks the dashboard's requests (they are served by
the event loop and its thread pool, which never wait on the queue).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from alignlab import runs
from alignlab.web import runsview

RULES = ("house_style", "char_fraction", "contains_word")
"""The built-in rule rewards of ``alignlab.rollout.rewards`` offered as simulator components."""
POLICY_STAGES = ("sft", "ppo", "dpo")
"""Stages whose final model answers the side-by-side prompt box (others with a final/ follow)."""
NOT_POLICIES = ("reward", "rm", "eval")


class BackendError(RuntimeError):
    """A model call that cannot be made (no reference model, a missing package): shown to the user."""


class Backend(Protocol):
    def components(self, run: str) -> list[dict]:
        """Reward components the simulator offers: ``[{"id": "gold:<name>", "label": ...}, ...]``."""
        ...

    def sample(self, run: str, prompt: str, n: int, seed: int) -> list[str]:
        """``n`` responses to ``prompt`` sampled from the run's reference policy π_ref."""
        ...

    def score(self, run: str, component: str, prompts: list[str], responses: list[str]) -> list[float]:
        """One score per response from reward component ``component``."""
        ...

    def answer(self, run: str, prompt: str) -> dict[str, str]:
        """``{policy stage: response}`` from each trained policy's final model."""
        ...


def gold_names() -> list[str]:
    """Names in ``alignlab.gold``'s registry, or [] where that module is not installed yet."""
    try:
        from alignlab import gold
    except ImportError:
        return []
    for attr in ("GOLD_REWARDS", "GOLDS", "REGISTRY"):
        reg = getattr(gold, attr, None)
        if isinstance(reg, dict):
            return sorted(str(k) for k in reg)
    for attr in ("list_golds", "names", "available"):
        fn = getattr(gold, attr, None)
        if callable(fn):
            try:
                return sorted(str(k) for k in fn())
            except Exception:  # noqa: BLE001 - a registry we do not understand: offer nothing from it
                return []
    return []


class ModelQueue:
    """One worker thread for every model call, in order of arrival."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alignlab-model")

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class ModelBackend:
    """The real backend: models from the run's folders, loaded on first use and kept (a few at a time)."""

    def __init__(
        self,
        root: Path,
        *,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        keep: int = 3,
    ):
        self.root = Path(root)
        self.max_new_tokens, self.temperature, self.keep = (
            max_new_tokens,
            temperature,
            keep,
        )
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ components
    def components(self, run: str) -> list[dict]:
        golds = gold_names()
        out = [{"id": f"gold:{g}", "label": f"gold: {g}"} for g in golds]
        out += [{"id": f"rule:{r}", "label": f"rule: {r}"} for r in RULES if r not in golds]
        for stage in ("reward", "rm"):
            try:
                sf = runsview.stage_folder(self.root, run, stage)
            except runsview.NotFound:
                continue
            if sf.final.is_dir():
                out.append({"id": f"rm:{stage}", "label": f"reward model ({stage}/final)"})
        return out

    # ------------------------------------------------------------------ models
    def _final(self, run: str, stage: str) -> Path:
        sf = runsview.stage_folder(self.root, run, stage)
        if not sf.final.is_dir():
            raise BackendError(f"run {run!r}: stage {stage!r} has no final/ model yet")
        return sf.final

    def _policy(self, folder: Path):
        key = f"policy:{folder}"
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        try:
            from alignlab.config import ModelConfig
            from alignlab.models.load import load_model
            from alignlab.rollout.generate import TransformersEngine
        except ImportError as e:
            raise BackendError(f"sampling needs alignlab's training dependencies (torch, transformers): {e}") from None
        loaded = load_model(ModelConfig(name_or_path=str(folder)), for_training=False)
        value = (TransformersEngine(loaded.model, loaded.tokenizer), loaded.tokenizer)
        self._remember(key, value)
        return value

    def _remember(self, key: str, value: Any) -> None:
        with self._lock:
            self._models[key] = value
            while len(self._models) > self.keep:
                self._models.popitem(last=False)

    def _generate(self, folder: Path, prompts: list[str], *, temperature: float, seed: int) -> list[str]:
        from alignlab.data.tokenize import encode_prompt
        from alignlab.rollout.generate import SamplingParams

        engine, tok = self._policy(folder)
        ids = [encode_prompt(tok, p) for p in prompts]  # a string is one user turn
        params = SamplingParams(max_new_tokens=self.max_new_tokens, temperature=temperature, seed=seed)
        return [g.text for g in engine.generate(ids, params)]

    def reference(self, run: str) -> Path:
        """π_ref: the SFT stage's final model (the policy PPO and DPO start from and are held to)."""
        return self._final(run, "sft")

    def sample(self, run: str, prompt: str, n: int, seed: int) -> list[str]:
        return self._generate(self.reference(run), [prompt] * n, temperature=self.temperature, seed=seed)

    # ------------------------------------------------------------------ scoring
    def score(self, run: str, component: str, prompts: list[str], responses: list[str]) -> list[float]:
        kind, _, name = component.partition(":")
        if kind == "gold":
            try:
                from alignlab.gold import get_gold
            except ImportError:
                raise BackendError("gold rewards need alignlab.gold, which is not installed in this version") from None
            try:
                return [float(v) for v in get_gold(name)(prompts, responses)]
            except Exception as e:  # noqa: BLE001 - a gold that needs options, say, is the user's to fix
                raise BackendError(f"gold reward {name!r} failed: {type(e).__name__}: {e}") from None
        if kind == "rule" and name in RULES:
            from alignlab.rollout.rewards import BUILTIN_REWARDS

            return [float(v) for v in BUILTIN_REWARDS[name](prompts, responses)]
        if kind == "rm":
            folder = self._final(run, name)
            key = f"rm:{folder}"
            with self._lock:
                source = self._models.get(key)
            if source is None:
                from alignlab.rollout.rewards import RewardModelSource

                source = RewardModelSource(folder)
                self._remember(key, source)
            n = len(responses)
            return [float(v) for v in source.score(prompts, responses, finished=[True] * n, meta=[{}] * n).tolist()]
        raise BackendError(f"unknown reward component {component!r}")

    # ------------------------------------------------------------------ side by side
    def answer(self, run: str, prompt: str) -> dict[str, str]:
        out = {}
        for stage in policy_stages(self.root, run):
            out[stage] = self._generate(self._final(run, stage), [prompt], temperature=0.0, seed=0)[0]
        if not out:
            raise BackendError(f"run {run!r} has no trained policy with a final/ model yet")
        return out


def policy_stages(root: Path, run: str) -> list[str]:
    """Stages of ``run`` with a final/ policy: sft, ppo, dpo first, then the others (not reward/eval)."""
    path = runsview.run_folder(root, run)
    names = [s for s in runsview.stages_of(path) if s not in NOT_POLICIES and runs.StageFolder(path / s).final.is_dir()]
    return [s for s in POLICY_STAGES if s in names] + [s for s in names if s not in POLICY_STAGES]
