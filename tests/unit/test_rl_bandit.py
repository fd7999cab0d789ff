"""The RL losses solve a one-step bandit whose KL-regularised optimum is known in closed form.

Four responses, a tabular softmax policy π_θ (θ = logits), a fixed reference π_ref and reward r.
The objective  E_{y~π}[r(y)] − β·KL(π‖π_ref)  is maximised by  π*(y) ∝ π_ref(y)·exp(r(y)/β).
At π* the KL-penalised reward r(y) − β·log(π*(y)/π_ref(y)) = β·log Z is the same for every y,
so every advantage is 0 and a correct estimator converges to π* with no sampling noise left.
Each response is one token, so token tensors are (n, 1) and the KL-penalised reward comes from
:func:`reward_with_kl` exactly as in a language-model rollout.
"""

import torch

from alignlab.losses.advantages import gae, rloo_advantages
from alignlab.losses.kl import AdaptiveKLController, reward_with_kl
from alignlab.losses.ppo import ppo_policy_loss, reinforce_loss

PI_REF = torch.tensor([0.4, 0.3, 0.2, 0.1])
REWARD = torch.tensor([0.0, 0.5, 1.0, 2.0])  # pushes mass towards the response π_ref likes least
REF_LOGPROBS = PI_REF.log()
BETA = 0.5


def optimum(beta: float) -> torch.Tensor:
    p = PI_REF * torch.exp(REWARD / beta)
    return p / p.sum()


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p - q).abs().sum().item()


def exact_kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return (p * (p / q).log()).sum().item()


def _sample(logprobs_all: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    return torch.multinomial(logprobs_all.detach().exp(), n, replacement=True, generator=g)  # (n,)


def _penalised_reward(actions, logprobs, beta):
    """KL-penalised reward per response via reward_with_kl: r − β·(logπ − logπ_ref). ``(n,)``."""
    ones = torch.ones(actions.shape[0], 1)
    rewards, kl = reward_with_kl(
        REWARD[actions], logprobs.detach()[:, None], REF_LOGPROBS[actions][:, None], ones, beta, "k1"
    )  # (n, 1) each
    return rewards.sum(-1), kl.sum(-1)  # (n,), (n,)


def test_optimum_is_far_from_reference():
    # otherwise the convergence tests below could pass without learning anything
    assert tv(PI_REF, optimum(BETA)) > 0.5


def test_rloo_reinforce_converges_to_kl_regularised_optimum():
    k, steps = 32, 400
    g = torch.Generator().manual_seed(0)
    theta = REF_LOGPROBS.clone().requires_grad_(True)  # start at π_ref
    opt = torch.optim.Adam([theta], lr=0.05)
    for _ in range(steps):
        logprobs_all = torch.log_softmax(theta, -1)  # (4,)
        actions = _sample(logprobs_all, k, g)  # (k,) one prompt, k samples
        logprobs = logprobs_all[actions]  # (k,)
        penalised, _ = _penalised_reward(actions, logprobs, BETA)  # (k,)
        adv = rloo_advantages(penalised, k)  # (k,)
        loss, _ = reinforce_loss(logprobs.unsqueeze(-1), adv, torch.ones(k, 1))  # responses of 1 token
        opt.zero_grad()
        loss.backward()
        opt.step()
    pi = torch.softmax(theta.detach(), -1)
    assert tv(pi, optimum(BETA)) < 0.05


def test_ppo_clipped_objective_converges_to_kl_regularised_optimum():
    n, iters, epochs = 64, 150, 4
    g = torch.Generator().manual_seed(0)
    theta = REF_LOGPROBS.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=0.05)
    clipfracs = []
    for _ in range(iters):
        with torch.no_grad():  # rollout from the current policy
            old_all = torch.log_softmax(theta, -1)
            actions = _sample(old_all, n, g)
            old = old_all[actions]  # (n,)
            penalised, _ = _penalised_reward(actions, old, BETA)  # (n,)
            # one-token episodes: GAE with V = the batch-mean baseline gives A = R − V
            baseline = penalised.mean().expand(n, 1)
            adv, _ = gae(penalised[:, None], baseline, torch.ones(n, 1), gamma=1.0, lam=1.0)  # (n, 1)
        for _ in range(epochs):  # several epochs on the same rollout: ratios leave 1
            logprobs = torch.log_softmax(theta, -1)[actions]
            # a tight clip range, so that epochs 2-4 really hit it
            loss, stats = ppo_policy_loss(logprobs[:, None], old[:, None], adv, torch.ones(n, 1), cliprange=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            clipfracs.append(stats["policy/clipfrac"].item())
    pi = torch.softmax(theta.detach(), -1)
    assert tv(pi, optimum(BETA)) < 0.05
    assert max(clipfracs) > 0  # the clipping was exercised


def test_adaptive_kl_controller_tracks_target():
    target, n, iters = 0.3, 64, 400
    ctl = AdaptiveKLController(init_beta=0.05, target=target, horizon=640)
    g = torch.Generator().manual_seed(0)
    theta = REF_LOGPROBS.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=0.05)
    kls = []
    for _ in range(iters):
        logprobs_all = torch.log_softmax(theta, -1)
        actions = _sample(logprobs_all, n, g)
        logprobs = logprobs_all[actions]
        penalised, kl = _penalised_reward(actions, logprobs, ctl.beta)  # (n,), (n,)
        loss, _ = reinforce_loss(logprobs.unsqueeze(-1), rloo_advantages(penalised, n), torch.ones(n, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctl.update(kl.mean().item(), n_steps=n)  # measured KL: per-sequence mean of summed k1
        kls.append(exact_kl(torch.softmax(theta.detach(), -1), PI_REF))
    # with the initial β the policy runs far past the target; the controller brings it back
    assert max(kls) > 3 * target
    assert ctl.beta > 5 * 0.05
    final = sum(kls[-100:]) / 100  # averaged over the last 100 steps: β still oscillates a little
    assert abs(final - target) < 0.3 * target
