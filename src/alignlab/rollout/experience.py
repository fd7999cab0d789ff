"""One rollout as tensors: what the RL stages (PPO, RLOO, GRPO) train on.

Layout of a rollout batch of B rows: prompts **left**-padded to a common width P, responses
**right**-padded to a common width R, side by side::

    prompt_ids    (B, P)   [pad pad x x x x]        prompt_mask   (B, P)   [0 0 1 1 1 1]
    response_ids  (B, R)   [y y y EOS pad pad]      response_mask (B, R)   [1 1 1 1 0 0]

so every response starts at column P of ``input_ids = [prompt_ids | response_ids]`` ``(B, P+R)``
and every token tensor of the response (log-probs, values, rewards, advantages, ...) is ``(B, R)``
with column t = response token t. Position ids count real tokens only (``cumsum(mask) − 1``), so
left padding does not shift positions and a row computes what it would compute alone.

``response_mask`` covers the response tokens including the EOS that ends a finished response
(the policy must learn to stop). Rows of a group method are stored contiguously,
``[prompt0 × k, prompt1 × k, ...]``, as the group advantage estimators expect.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class Experience:
    """A rollout and the training targets computed from it. Tensors stay on the CPU until used."""

    prompt_ids: torch.Tensor  # (B, P) long, left-padded
    prompt_mask: torch.Tensor  # (B, P) long, 1 on real prompt tokens
    response_ids: torch.Tensor  # (B, R) long, right-padded; ends with EOS when finished
    response_mask: torch.Tensor  # (B, R) float, 1 on valid response tokens (EOS included)
    finished: torch.Tensor  # (B,) bool, the response ended with EOS (False: cut at max_new_tokens)
    scores: torch.Tensor | None = None  # (B,) reward-source scores after the truncation penalty, before normalisation
    old_logprobs: torch.Tensor | None = (
        None  # (B, R) log π_old(y_t) of the policy that sampled, at the sampling temperature
    )
    ref_logprobs: torch.Tensor | None = None  # (B, R) log π_ref(y_t), same temperature
    values: torch.Tensor | None = None  # (B, R) V(s_t) before token t (PPO only)
    rewards: torch.Tensor | None = (
        None  # (B, R) per token (PPO: −β·kl + score at the last token) or (B,) per sequence (RLOO)
    )
    advantages: torch.Tensor | None = None  # (B, R) per token (PPO, GAE) or (B,) per sequence (RLOO, GRPO)
    returns: torch.Tensor | None = None  # (B, R) value targets A + V (PPO only)
    backpropagated: bool = False  # the update's gradient is already accumulated (an on-policy rollout pass)
    keep: torch.Tensor | None = None  # (B,) bool: rows that carry a learning signal (DAPO's dynamic sampling)
    prompt_texts: list[str] | None = None  # B prompt texts (the last user message), for the rollout files

    # ----------------------------------------------------------------- views
    @property
    def prompt_width(self) -> int:
        return self.prompt_ids.shape[1]

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)  # (B, P+R)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask.long()], dim=1)  # (B, P+R)

    @property
    def position_ids(self) -> torch.Tensor:
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P+R)

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)  # (B,)

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def select(self, index: torch.Tensor) -> Experience:
        """The rows ``index`` (a minibatch): every tensor field indexed along dim 0."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                out[f.name] = value[index]
            elif isinstance(value, list):
                out[f.name] = [value[i] for i in index.tolist()]
            else:
                out[f.name] = value
        return Experience(**out)

    def minibatches(self, size: int, generator: torch.Generator) -> list[Experience]:
        """The rows in a random order cut into minibatches of ``size`` rows (the last may be smaller)."""
        order = torch.randperm(len(self), generator=generator)
        return [self.select(order[i : i + size]) for i in range(0, len(self), size)]


def collate_rollout(
    prompts: list[list[int]], responses: list[list[int]], finished: list[bool], pad_id: int
) -> Experience:
    """Token id lists -> an :class:`Experience` with the layout of the module docstring.

    Every response must hold at least one token (an engine always returns one: at least EOS).
    """
    if not (len(prompts) == len(responses) == len(finished)) or not prompts:
        raise ValueError(
            f"need as many prompts, responses and flags (got {len(prompts)}, {len(responses)}, {len(finished)}), at least one"
        )
    B = len(prompts)
    P = max(len(p) for p in prompts)
    R = max(1, max(len(r) for r in responses))
    prompt_ids = torch.full((B, P), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((B, P), dtype=torch.long)
    response_ids = torch.full((B, R), pad_id, dtype=torch.long)
    response_mask = torch.zeros((B, R), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if not r:
            raise ValueError(f"row {i}: empty response (an engine returns at least the EOS token)")
        prompt_ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        prompt_mask[i, P - len(p) :] = 1
        response_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        response_mask[i, : len(r)] = 1.0
    return Experience(prompt_ids, prompt_mask, response_ids, response_mask, torch.tensor(finished, dtype=torch.bool))
