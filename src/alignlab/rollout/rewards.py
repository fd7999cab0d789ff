"""Reward sources: where the RL stages' scores come from, behind one interface.

A :class:`RewardSource` scores a batch of (prompt, response) pairs and returns ``(B,)`` float32
scores (the glossary's *scores*: before the KL penalty and any normalisation). ``reward.source``
in a stage config picks one (:func:`load_reward_source`):

* a **reward-model folder** (a reward run's ``final/``, in the Hugging Face sequence-classification
  layout or the older checkpoint layout): scored by
  ``alignlab.models.heads.load_reward_model`` at the last real token, with the model's own
  normalisation; the response is re-tokenised with the reward model's tokenizer and ends with EOS
  only when it finished;
* a **gold reward** (:mod:`alignlab.gold`, the same registry the simulated annotator and
  evaluation use): ``gold:<spec>``, e.g. ``gold:sentiment``, ``gold:sentiment+0.5*concise``,
  ``gold:concise(target=20)``, ``gold:demo`` (bare ``gold`` is ``gold:demo``); a registry name
  alone also works (``house_style``, ``contains_word``, ``char_fraction``, ``sentiment``, ...);
* a **Python function** ``module:function`` (e.g. a verifiable check):
  ``fn(prompts: list[str], responses: list[str], **kwargs) -> list[float]``. ``prompts`` are the
  last user message of each prompt; if ``fn`` accepts them by name it also gets ``messages``
  (each prompt as chat dicts), ``meta`` (each prompt record's other fields, e.g. a reference
  answer) and ``finished`` (ended with EOS). ``reward.kwargs`` (``key=value`` strings) become
  keyword arguments, checked against the signature when the source is loaded.

Every problem with a source (a missing module or function, a folder that is not a reward model,
a function that returns the wrong number of scores or a non-finite one) is a ConfigError that
names the source.

Also here: :func:`apply_truncation_penalty` and :class:`RunningMoments` (PPO's running
normalisation of scores, saved in checkpoints).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from alignlab.errors import ConfigError
from alignlab.gold import (  # noqa: F401 - old imports
    GOLD_REWARDS,
    HOUSE_PHRASE,
    char_fraction,
    contains_word,
    get_gold,
    house_style,
)

# The built-in rules live in alignlab.gold (one registry); re-exported here for old imports.
BUILTIN_REWARDS: dict[str, Callable[..., list[float]]] = GOLD_REWARDS

# Optional arguments a reward function may take by name (in addition to prompts, responses).
OPTIONAL_INPUTS = ("messages", "meta", "finished")


# ----------------------------------------------------------------------------- interface
@runtime_checkable
class RewardSource(Protocol):
    """Scores for a batch: ``prompts`` are records' prompts (a tuple of messages, or a string)."""

    name: str

    def score(
        self, prompts: Sequence[Any], responses: Sequence[str], *, finished: Sequence[bool], meta: Sequence[dict]
    ) -> torch.Tensor:
        """``(B,)`` float32 scores, one per (prompt, response)."""
        ...


def _chat(prompt) -> list[dict]:
    from alignlab.data.tokenize import messages_of

    return messages_of(prompt)


def last_user_text(prompt) -> str:
    """The text a rule looks at for a prompt: its last user message (or the string itself)."""
    chat = _chat(prompt)
    users = [m["content"] for m in chat if m["role"] == "user"]
    return users[-1] if users else chat[-1]["content"]


def _check_scores(values, n: int, name: str) -> torch.Tensor:
    try:
        scores = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    except (TypeError, ValueError):
        raise ConfigError(
            f"reward source '{name}' must return a list of numbers; got {type(values).__name__}"
        ) from None
    if scores.shape != (n,):
        raise ConfigError(
            f"reward source '{name}' returned {scores.numel()} scores for {n} responses; return one per response"
        )
    if not torch.isfinite(scores).all():
        bad = int((~torch.isfinite(scores)).nonzero()[0])
        raise ConfigError(
            f"reward source '{name}' returned a non-finite score ({float(scores[bad])}) for response {bad}"
        )
    return scores


class FunctionReward:
    """A Python function ``fn(prompts, responses, **kwargs) -> list[float]`` as a reward source."""

    def __init__(self, fn: Callable, name: str, kwargs: dict | None = None):
        self.fn, self.name, self.kwargs = fn, name, dict(kwargs or {})
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # a builtin without a signature: call it as is
            self._optional: tuple[str, ...] = ()
            return
        takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        self._optional = tuple(k for k in OPTIONAL_INPUTS if k in sig.parameters or takes_any)
        try:
            sig.bind_partial(None, None, **self.kwargs)
        except TypeError as e:
            params = [p for p in sig.parameters if p not in ("prompts", "responses", *OPTIONAL_INPUTS)]
            raise ConfigError(
                f"reward.kwargs {sorted(self.kwargs)} do not fit reward function '{name}' ({e}); it takes: {', '.join(params) or 'no options'}"
            ) from None

    def score(self, prompts, responses, *, finished, meta) -> torch.Tensor:
        extra = {
            "messages": [_chat(p) for p in prompts],
            "meta": list(meta),
            "finished": [bool(f) for f in finished],
        }
        call = {k: extra[k] for k in self._optional}
        values = self.fn([last_user_text(p) for p in prompts], list(responses), **call, **self.kwargs)
        return _check_scores(values, len(responses), self.name)


class RewardModelSource:
    """A trained reward model folder (see ``alignlab.models.heads``), scored in batches, no grad."""

    def __init__(self, folder: Path, *, device: str = "auto", batch_size: int = 16):
        try:
            from alignlab.models.heads import load_reward_model
        except ImportError as e:  # pragma: no cover - heads ships with alignlab
            raise ConfigError(f"reward.source '{folder}': reward models need alignlab.models.heads ({e})") from None
        self.name = str(folder)
        self.last_disagreement: float | None = None  # mean std over an ensemble's heads in the last score() call
        self.loaded = load_reward_model(folder, device=device)
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, prompts, responses, *, finished, meta) -> torch.Tensor:
        from alignlab.data.tokenize import encode_prompt

        rm, tok = self.loaded.model, self.loaded.tokenizer
        device = next(rm.parameters()).device
        rows = []
        for p, r, f in zip(prompts, responses, finished):
            ids = list(tok.encode(r, add_special_tokens=False)) + ([tok.eos_token_id] if f else [])
            rows.append(encode_prompt(tok, p) + ids)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out, spread = [], []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            width = max(len(c) for c in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attn = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, c in enumerate(chunk):  # left padding: the last real token is the last column
                ids[i, width - len(c) :] = torch.tensor(c, dtype=torch.long)
                attn[i, width - len(c) :] = 1
            heads = rm.forward_heads(ids.to(device), attn.to(device)).float().cpu()  # (b, K) raw
            out.append((heads.mean(-1) - rm.shift) / rm.scale)  # (b,) normalised, as rm.score
            if heads.shape[1] > 1:
                spread.append((heads / rm.scale).std(-1))  # (b,): the ensemble's disagreement
        self.last_disagreement = float(torch.cat(spread).mean()) if spread else None
        return torch.cat(out)


# ----------------------------------------------------------------------------- loading
def parse_kwargs(items: Sequence[str]) -> dict:
    """``["word=thanks", "n=3"]`` -> ``{"word": "thanks", "n": 3}`` (values read as YAML scalars)."""
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"reward.kwargs: '{item}' must look like key=value (e.g. word=thanks)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = value
    return out


def import_function(spec: str) -> Callable:
    """``"package.module:function"`` -> the function; a ConfigError naming what is missing."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(
            f"reward.source '{spec}': a Python reward is written module:function (e.g. mypkg.rewards:score)"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"reward.source '{spec}': module '{module_name}' not found ({e}); check the name and that it is importable (on PYTHONPATH)"
        ) from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing
        raise ConfigError(
            f"reward.source '{spec}': importing module '{module_name}' failed: {type(e).__name__}: {e}"
        ) from None
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean '{module_name}:{close[0]}'?" if close else ""
            raise ConfigError(f"reward.source '{spec}': module '{module_name}' has no function '{attr}'{hint}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ConfigError(
            f"reward.source '{spec}': '{attr}' in '{module_name}' is a {type(fn).__name__}, not a function"
        )
    return fn


def load_reward_source(
    spec: str, kwargs: Sequence[str] | dict = (), *, device: str = "auto", batch_size: int = 16
) -> RewardSource:
    """Build the reward source named by ``spec`` (see the module docstring for the forms)."""
    options = dict(kwargs) if isinstance(kwargs, dict) else parse_kwargs(kwargs)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(
            "reward.source is empty: give a reward-model folder, a built-in rule "
            f"({', '.join(BUILTIN_REWARDS)}), module:function or gold:<spec>"
        )
    spec = spec.strip()
    if spec == "gold" or spec.startswith("gold:"):
        gold_spec = spec[len("gold:") :].strip() if spec != "gold" else "demo"
        return FunctionReward(get_gold(gold_spec), spec, options)
    path = Path(spec).expanduser()
    if path.is_dir():
        if options:
            raise ConfigError(
                f"reward.kwargs apply to Python reward functions, not to the reward-model folder '{spec}'"
            )
        return RewardModelSource(path, device=device, batch_size=batch_size)
    if spec in GOLD_REWARDS:
        return FunctionReward(get_gold(spec), spec, options)
    if ":" in spec:
        return FunctionReward(import_function(spec), spec, options)
    close = difflib.get_close_matches(spec, list(BUILTIN_REWARDS), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"reward.source '{spec}': not a folder, a built-in rule ({', '.join(BUILTIN_REWARDS)}), "
        f"module:function or gold:<spec>{hint}"
    )


def apply_truncation_penalty(scores: torch.Tensor, finished: torch.Tensor, penalty: float) -> torch.Tensor:
    """Subtract ``penalty`` from the score of every response that hit the length limit without EOS.

    ``scores`` (B,) float, ``finished`` (B,) bool -> (B,). ``penalty`` 0 leaves scores unchanged.
    """
    if penalty == 0:
        return scores
    if not math.isfinite(penalty):
        raise ConfigError(f"rollout.truncation_penalty must be finite; got {penalty}")
    return scores - penalty * (~finished.bool()).to(scores.dtype)


# ----------------------------------------------------------------------------- normalisation
class RunningMoments:
    """Running mean and (unbiased) std of every score seen, merged batch by batch (Chan et al. 1979).

    ``state_dict`` holds plain floats, so the normaliser is saved in checkpoints and a resumed run
    normalises exactly as a straight one.
    """

    def __init__(self):
        self.count, self.mean, self.m2 = 0.0, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        n = float(x.numel())
        if n == 0:
            return
        batch_mean = float(x.mean())
        batch_m2 = float(((x - batch_mean) ** 2).sum())
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def normalize(self, x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        return (x - self.mean) / (self.std + eps)

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = float(state["count"]), float(state["mean"]), float(state["m2"])
