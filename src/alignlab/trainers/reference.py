"""Reference log-probs: computed once per data set, cached on disk, reused across runs and epochs.

The reference-based preference losses need ``seq_logps`` of π_ref for every response. π_ref never
changes, so they are computed in one pass before training (with a progress bar) and stored in
``<cache>/reflogps/<key>.safetensors`` (``models.presets.cache_dir()``), ``key`` a hash of:

* the reference model's identity (:func:`model_identity`): for ``tiny``, its seed and a hash of
  its weights; for a folder, its resolved path and each file's name, size and mtime (an adapter
  folder adds its base's identity); the dtype and the device type (CPU and GPU round differently);
* the tokenised data: every row's prompt and response ids, in order (so the truncation settings
  and the tokenizer are covered), plus the settings themselves.

No second copy of the model: with LoRA, π_ref is the same network with the adapter disabled
(``model.disable_adapter()``); with full fine-tuning the pass runs on the initial weights, before
the first optimizer step (a resumed run rebuilds the model from its source before the checkpoint
is restored, so even a cache miss then gives the same numbers). The file is written to a temporary
name, fsynced and renamed into place, so a reader never sees half a file. Values are float32 and
read back bit-for-bit: a run that computed them and a run that read them train identically.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.models.logprobs import reference_mode

FORMAT = 1  # bump when the way log-probs are computed changes


@dataclass
class ReferenceLogps:
    """(N,) float32 tensors by name (e.g. ``chosen``, ``rejected``), and where they came from."""

    tensors: dict[str, torch.Tensor]
    path: Path | None
    hit: bool  # read from the cache (no forward pass)

    def take(self, name: str, index: torch.Tensor, device) -> torch.Tensor:
        return self.tensors[name][index.cpu()].to(device)


# ----------------------------------------------------------------------------- identity and key
def _files_identity(folder: Path) -> list:
    return sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".")
    )


def _weights_hash(model) -> str:
    from alignlab.models.logprobs import unwrap

    h = hashlib.sha256()
    for name, t in sorted(unwrap(model).state_dict().items()):
        if "lora_" in name:  # adapters are off for the reference
            continue
        h.update(name.replace(".base_layer", "").encode())  # a LoRA-wrapped layer names its base weight so
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def source_identity(name_or_path: str, seed: int, model=None) -> dict:
    """What identifies the weights ``name_or_path`` loads (see the module docstring)."""
    from alignlab.models import presets

    if name_or_path == "tiny":
        return {"tiny": seed, "weights": _weights_hash(model) if model is not None else None}
    p = Path(name_or_path).expanduser()
    if name_or_path == "smollm2-135m":
        p = presets.smollm2_dir(progress=False)
    if not p.is_dir():
        return {"hub": name_or_path}  # a hub id from the local cache
    ident: dict = {"folder": str(p.resolve()), "files": _files_identity(p)}
    info = p / "alignlab_model.json"
    if (p / "adapter_config.json").is_file() and info.is_file():
        meta = json.loads(info.read_text(encoding="utf-8"))
        if meta.get("base"):
            ident["base"] = source_identity(meta["base"], meta.get("seed", seed), model)
    return ident


def model_identity(model_cfg, seed: int, model=None) -> dict:
    """The reference model's identity for the cache key: source, dtype and device type."""
    from alignlab.models.load import resolve_device

    return {
        "source": source_identity(model_cfg.name_or_path, seed, model),
        "dtype": model_cfg.dtype,
        "device": resolve_device(model_cfg.device).type,
    }


def data_fingerprint(rows: Iterable[Iterable[list[int]]]) -> str:
    """Hash of the tokenised data: each item is a tuple of id lists (e.g. prompt, chosen, rejected)."""
    h = hashlib.sha256()
    for item in rows:
        for ids in item:
            h.update(len(ids).to_bytes(4, "little"))
            h.update(array("q", ids).tobytes())
        h.update(b"|")
    return h.hexdigest()


def cache_key(identity: dict, fingerprint: str, settings: dict) -> str:
    blob = json.dumps(
        {"format": FORMAT, "model": identity, "data": fingerprint, "settings": settings}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


def cache_path(key: str) -> Path:
    from alignlab.models.presets import cache_dir

    return cache_dir() / "reflogps" / f"{key}.safetensors"


# ----------------------------------------------------------------------------- computing
def seq_logps(model, batch: dict) -> torch.Tensor:
    """Per-sequence sums of response-token log-probs: ``(N, T)`` batch (or packed rows) -> ``(N,)`` float32."""
    from alignlab.losses.reduce import masked_sum
    from alignlab.models.logprobs import batch_logprobs

    logprobs = batch_logprobs(model, batch)  # (rows, T-1)
    if "seq_index" in batch:  # packed rows: add each position into its sequence
        index = batch["seq_index"].to(logprobs.device)
        keep = index >= 0
        out = torch.zeros(batch["n_seqs"], dtype=logprobs.dtype, device=logprobs.device)
        return out.index_add(0, index[keep], logprobs[keep])  # (N,)
    return masked_sum(logprobs, batch["loss_mask"].to(logprobs.device), dim=-1)  # (N,)


def compute_reference_logps(
    model,
    n_items: int,
    make_batch: Callable[[list[int]], dict],
    names: tuple[str, ...],
    *,
    batch_size: int,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """One pass over items ``0..n_items-1`` under :func:`reference_mode`.

    ``make_batch(indices)`` must put its rows name-major: rows ``0..B-1`` for ``names[0]``, then
    ``B..2B-1`` for ``names[1]``, ... (as ``collate_pairs`` and ``collate_unpaired`` do).
    """
    from tqdm.auto import tqdm

    out = {name: torch.empty(n_items, dtype=torch.float32) for name in names}
    with reference_mode(model):
        for start in tqdm(range(0, n_items, batch_size), disable=not progress, desc="reference logps", unit="batch"):
            idx = list(range(start, min(start + batch_size, n_items)))
            logps = seq_logps(model, make_batch(idx)).float().cpu().view(len(names), len(idx))  # (names, B)
            for k, name in enumerate(names):
                out[name][idx] = logps[k]
    return out


def _write_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    from safetensors.torch import save

    from alignlab.runs import atomic_write_bytes

    blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata={k: str(v) for k, v in metadata.items()})
    atomic_write_bytes(path, blob)


def _read(path: Path, names: tuple[str, ...], n_items: int) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception:  # noqa: BLE001 - an unreadable cache entry is recomputed, never trusted
        return None
    if set(tensors) != set(names) or any(t.shape != (n_items,) for t in tensors.values()):
        return None
    return tensors


def reference_logps(
    model,
    *,
    identity: dict,
    fingerprint: str,
    settings: dict,
    n_items: int,
    make_batch: Callable[[list[int]], dict],
    names: tuple[str, ...],
    batch_size: int,
    use_cache: bool = True,
    progress: bool = True,
    log=None,
) -> ReferenceLogps:
    """The reference ``seq_logps`` of a data set: from the cache when the key matches, else computed (and cached)."""
    key = cache_key(identity, fingerprint, {**settings, "names": list(names)})
    path = cache_path(key) if use_cache else None
    if path is not None and path.is_file():
        tensors = _read(path, names, n_items)
        if tensors is not None:
            if log:
                log.info("reference log-probs: cache hit %s", path)
            return ReferenceLogps(tensors, path, hit=True)
        if log:
            log.warning("reference log-probs: %s is unreadable or stale; recomputing", path)
    tensors = compute_reference_logps(model, n_items, make_batch, names, batch_size=batch_size, progress=progress)
    if path is not None:
        _write_atomic(
            path, tensors, {"format": FORMAT, "n_items": n_items, "settings": json.dumps(settings, default=str)}
        )
        if log:
            log.info("reference log-probs: computed %d items, cached in %s", n_items, path)
    return ReferenceLogps(tensors, path, hit=False)
