"""DPO on a one-step bandit: the trained tabular policy reaches the analytic optimum.

With one prompt and N possible responses, preferences drawn from a Bradley–Terry model with
reward r, the KL-regularised RLHF objective max_π E_π[r] - β·KL(π‖π_ref) has the solution

    π*(y) ∝ π_ref(y) · exp(r(y) / β)

and DPO's loss is minimised by the same π* (Rafailov et al., 2023, sec. 4): its implicit reward
β·log(π/π_ref) is the maximum-likelihood Bradley–Terry reward, identified up to a constant.
"""

from __future__ import annotations

import torch

from alignlab.losses.preference import dpo

N = 4
BETA = 0.5
REF_LOGITS = torch.tensor([1.0, 0.5, 0.0, -0.5], dtype=torch.float64)
TRUE_REWARD = torch.tensor([-0.5, 0.0, 0.5, 0.25], dtype=torch.float64)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p - q).abs().sum().item()


def sample_preferences(n_pairs: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs of distinct responses, uniform over pairs; the winner drawn from Bradley–Terry."""
    a = torch.randint(0, N, (n_pairs,), generator=generator)
    b = (a + torch.randint(1, N, (n_pairs,), generator=generator)) % N  # (P,), b != a
    p_a_wins = torch.sigmoid(TRUE_REWARD[a] - TRUE_REWARD[b])  # (P,)
    a_wins = torch.rand(n_pairs, generator=generator, dtype=torch.float64) < p_a_wins
    chosen = torch.where(a_wins, a, b)  # (P,) response ids
    rejected = torch.where(a_wins, b, a)
    return chosen, rejected


def test_dpo_tabular_policy_reaches_analytic_optimum():
    generator = torch.Generator().manual_seed(1234)
    chosen, rejected = sample_preferences(20_000, generator)

    ref_logps = torch.log_softmax(REF_LOGITS, -1)  # (N,)
    optimum = torch.softmax(ref_logps + TRUE_REWARD / BETA, -1)  # (N,) π*
    pi_ref = ref_logps.exp()
    assert total_variation(pi_ref, optimum) > 0.25  # the untrained policy is far from π*

    logits = torch.nn.Parameter(REF_LOGITS.clone())  # start at π = π_ref, as DPO does
    optimizer = torch.optim.Adam([logits], lr=0.05)
    for _ in range(200):
        logps = torch.log_softmax(logits, -1)  # (N,)
        # a response is one token here, so seq_logps = log π(y)
        loss, stats = dpo(logps[chosen], logps[rejected], ref_logps[chosen], ref_logps[rejected], beta=BETA)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    learned = torch.softmax(logits.detach(), -1)
    assert total_variation(learned, optimum) < 0.05, (learned, optimum)
    # the implicit reward β·log(π/π_ref) recovers r up to a constant
    implicit = BETA * (torch.log(learned) - ref_logps)
    assert torch.allclose(implicit - implicit.mean(), TRUE_REWARD - TRUE_REWARD.mean(), atol=0.1)
    assert stats["rewards/accuracy"].item() > 0.5
