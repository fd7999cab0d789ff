"""Masked reductions: the one place where tokens are averaged.

Every loss in alignlab reduces through these helpers so that each mean says what it averages:

* ``masked_mean(x, mask)`` — **per token**: sum of ``x`` over valid tokens / number of valid tokens
  (over the whole batch, or along ``dim``).
* ``seq_mean(x, mask)`` — **per sequence**: mean over each row's valid tokens, shape ``(B,)``; a row
  with no valid token gets 0 and is reported by ``mask.sum(-1) == 0``.
* ``masked_sum(x, mask)`` — the sum over valid tokens (``seq_logps`` are ``masked_sum`` along -1).

When only per-sequence sums are at hand (``seq_logps`` and response lengths), the same two means are:

* ``length_normalize(sums, lengths)`` — **per sequence**: each sum over its own length, ``(B,)``;
* ``pooled_token_mean(sums, lengths)`` — **per token**: Σ sums / Σ lengths, ``()``; equal to
  ``masked_mean`` over the tokens the sums came from.

A mean over an empty mask never silently returns 0 or NaN: ``masked_mean`` raises
:class:`~alignlab.errors.NumericalError` unless ``allow_empty=True`` is passed, in which case the
result is 0 *and* callers can see the count is zero.
"""

from __future__ import annotations

import torch

from alignlab.errors import NumericalError


def _as_float_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.to(dtype=like.dtype if like.is_floating_point() else torch.float32)


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is true (masked entries contribute exactly 0, even if NaN)."""
    m = _as_float_mask(mask, values)
    v = torch.where(mask.bool(), values, torch.zeros_like(values))
    if dim is None:
        return (v * m).sum()
    return (v * m).sum(dim)


def masked_mean(
    values: torch.Tensor,
    mask: torch.Tensor,
    dim: int | None = None,
    *,
    allow_empty: bool = False,
) -> torch.Tensor:
    """Per-token mean of ``values`` over ``mask`` (whole tensor, or along ``dim``).

    Raises NumericalError when there is no valid token (over the whole tensor when ``dim`` is
    None, or in any slice along ``dim``), unless ``allow_empty``; then empty slices give 0.
    """
    count = _as_float_mask(mask, values)
    count = count.sum() if dim is None else count.sum(dim)
    if not allow_empty and bool((count == 0).any()):
        raise NumericalError(
            "a masked mean has no valid tokens (every label is masked); "
            "check that responses are not empty after truncation"
        )
    total = masked_sum(values, mask, dim)
    return total / count.clamp(min=1)


def seq_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean over the last dim: ``(B, T) -> (B,)``; rows with no valid token give 0."""
    return masked_mean(values, mask, dim=-1, allow_empty=True)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``values`` over the valid tokens of the whole tensor (per token)."""
    mean = masked_mean(values, mask)
    centred = (values - mean) ** 2
    var = masked_mean(centred, mask)
    if unbiased:
        n = mask.sum().to(var.dtype)
        if n > 1:
            var = var * n / (n - 1)
    return var


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``values`` to zero mean, unit variance over valid tokens; masked entries become 0.

    With ``shift_mean=False`` the mean is added back (used for rewards, where the sign matters).
    """
    mean = masked_mean(values, mask)
    var = masked_var(values, mask)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, torch.zeros_like(out))


def _check_lengths(sums: torch.Tensor, lengths: torch.Tensor) -> None:
    if sums.shape != lengths.shape or sums.dim() != 1:
        raise ValueError(f"sums and lengths must both be (B,); got {tuple(sums.shape)} and {tuple(lengths.shape)}")
    if bool((lengths <= 0).any()):
        raise NumericalError(
            "a response has length 0 (no response tokens); check that responses are not empty after truncation"
        )


def length_normalize(sums: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean from per-sequence sums: ``sums / lengths``, ``(B,), (B,) -> (B,)``.

    ``lengths`` are response token counts (int or float); a length <= 0 is an empty response and
    raises :class:`NumericalError` instead of dividing by zero.
    """
    _check_lengths(sums, lengths)
    return sums / lengths.to(sums.dtype)


def pooled_token_mean(sums: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-token mean from per-sequence sums: ``Σ_b sums_b / Σ_b lengths_b``, ``(B,), (B,) -> ()``.

    Every token of the batch weighs the same (a long response counts more than a short one), which
    is what ``masked_mean`` over the underlying ``(B, T)`` tokens gives. Lengths as in
    :func:`length_normalize`.
    """
    _check_lengths(sums, lengths)
    return sums.sum() / lengths.to(sums.dtype).sum()
