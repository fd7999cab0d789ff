"""Where an RL stage's networks live: the policy, its frozen reference copy, the reward model and a
separate value trunk (``placement`` of the RL stages).

PPO with full fine-tuning holds up to four networks; only the policy (and a separate value trunk)
trains, with gradients and AdamW's two moments (4× its weights). On one process with several GPUs
the frozen ones need no optimizer, so ``auto`` moves them off the policy's GPU:

=========  ==========  ==================  ==================
GPUs       policy      reference, reward   separate value
=========  ==========  ==================  ==================
0 or 1     model.dev.  model.device        model.device
2          cuda:0      cuda:1              cuda:0 (it trains)
3 or more  cuda:0      cuda:1              cuda:2
=========  ==========  ==================  ==================

Several processes (one device each) keep everything on their own device, and so does ``same``.
Explicit: ``reference=cuda:1,reward=cuda:1,value=cuda:2`` (roles left out stay with the policy).
A LoRA policy's reference is the policy itself with its adapter off, so it stays with it. Tensors
cross devices only at the edges: each network's inputs go to its device, its outputs (log-probs,
scores, the value trunk's hidden states) come back to the policy's.
"""

from __future__ import annotations

from alignlab.errors import ConfigError

ROLES = ("reference", "reward", "value")  # the policy's device is model.device


def plan(spec: str, *, policy_device: str, gpus: int, processes: int = 1) -> dict[str, str]:
    """Device per role (``policy`` and :data:`ROLES`) for the ``placement`` spec; a ConfigError names a bad one."""
    spec = (spec or "auto").strip()
    out = {"policy": policy_device, **{r: policy_device for r in ROLES}}
    if spec == "same":
        return out
    if spec == "auto":
        if processes > 1 or gpus < 2 or not policy_device.startswith("cuda"):
            return out
        out.update(policy="cuda:0", reference="cuda:1", reward="cuda:1", value="cuda:2" if gpus >= 3 else "cuda:0")
        return out
    for item in spec.split(","):
        role, sep, device = (s.strip() for s in item.partition("="))
        if not sep or role not in ROLES or not device:
            raise ConfigError(
                f"'placement': {item.strip()!r} is not role=device with role one of {', '.join(ROLES)} "
                "(or use auto / same), e.g. reference=cuda:1,reward=cuda:1"
            )
        out[role] = check_device(device, gpus, role)
    return out


def check_device(device: str, gpus: int, role: str) -> str:
    """``device`` if this machine has it; a ConfigError otherwise."""
    if device == "cpu":
        return device
    if device == "cuda":
        device = "cuda:0"
    head, _, index = device.partition(":")
    if head != "cuda" or not index.isdigit():
        raise ConfigError(f"'placement': {role}={device} is not cpu or cuda:N")
    if int(index) >= gpus:
        raise ConfigError(f"'placement': {role}={device}, but this machine has {gpus} CUDA device(s)")
    return device


def describe(devices: dict[str, str]) -> str:
    return ", ".join(f"{role} on {dev}" for role, dev in devices.items())
