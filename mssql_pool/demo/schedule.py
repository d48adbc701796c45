"""The chaos schedule: which fault, when, how big; a pure function of the seed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FaultPlan:
    """One scheduled fault. ``at`` and ``window`` are seconds from the workload start."""

    key: str
    label: str
    at: float
    window: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    # Filled in while running:
    started: float | None = None
    ended: float | None = None
    skipped: str = ""
    detail: str = ""
    stats_at_start: dict[str, int] = field(default_factory=dict)


FAULT_KEYS = (
    "kill",
    "deadlock",
    "login_burst",
    "restart",
    "redirect",
    "partition",
    "commit_lost",
)


def make_schedule(
    seed: int, duration: float, keys: tuple[str, ...] = FAULT_KEYS
) -> list[FaultPlan]:
    """A deterministic chaos schedule: the same seed and duration give the same plan.

    Faults are spread over the run, leaving a warm-up before the first and time to
    recover after the last; their order, exact times and sizes come from ``seed``.
    """
    rng = random.Random(seed)
    order = list(keys)
    rng.shuffle(order)
    warmup = min(2.0, duration * 0.12)
    cooldown = min(3.0, duration * 0.2)
    span = max(duration - warmup - cooldown, 0.1)
    slot = span / max(len(order), 1)
    plans: list[FaultPlan] = []
    for i, key in enumerate(order):
        at = round(warmup + i * slot + rng.uniform(0.0, slot * 0.25), 2)
        room = slot * 0.6
        if key == "kill":
            frac = rng.choice((0.5, 0.75, 1.0))
            plans.append(
                FaultPlan(
                    key, f"sessions killed ({int(frac * 100)}%)", at, params={"fraction": frac}
                )
            )
        elif key == "deadlock":
            n = rng.randint(3, 6)
            plans.append(FaultPlan(key, f"deadlock victims (1205 x{n})", at, params={"times": n}))
        elif key == "login_burst":
            n = rng.randint(4, 8)
            plans.append(FaultPlan(key, f"login burst (40613 x{n})", at, params={"times": n}))
        elif key == "restart":
            down = round(min(rng.uniform(0.8, 1.5), room), 2)
            plans.append(FaultPlan(key, f"server restart ({down:.1f} s down)", at, down))
        elif key == "redirect":
            plans.append(FaultPlan(key, "gateway redirect to node 2", at))
        elif key == "partition":
            secs = round(min(rng.uniform(1.5, 2.5), room), 2)
            plans.append(FaultPlan(key, f"network partition ({secs:.1f} s)", at, secs))
        elif key == "commit_lost":
            plans.append(FaultPlan(key, "COMMIT reply lost", at))
    return plans
