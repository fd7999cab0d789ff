"""The value function V(s_t) of PPO: a linear head ``H -> 1`` on a causal LM trunk's hidden states.

Two ways to hold it (``PPOConfig.value_model``):

* ``head`` — on the **policy's own trunk**: one forward pass gives log-probs and values, and the
  value loss trains the shared trunk (or its LoRA adapters) too;
* ``separate`` — on a **second copy** of the model (its own LoRA adapters, or all weights): no
  interference between the two losses, at the cost of a second network, its activations and,
  with full fine-tuning, its optimizer state.

The head starts at zero (V = 0 everywhere, and no gradient reaches the trunk through the value
loss until the head has learnt something) and computes in float32 whatever the trunk's dtype.
"""

from __future__ import annotations

import torch


class ValueHead(torch.nn.Module):
    """``(B, T, H)`` hidden states -> ``(B, T)`` float32 values."""

    def __init__(self, hidden_size: int, device=None):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1, dtype=torch.float32, device=device)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)  # (B, T, H) -> (B, T)
