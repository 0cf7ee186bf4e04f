"""Planner throughput: one full pass over 1,000 services x 10 instances, against a 200 ms budget.

No peer plans the same thing, so the figure is printed as a ratio to the budget from issue 2
(< 1.0 is within budget). The fleet is a mix the planner meets in real life: half pets, half
cattle, dependency chains, most instances in `run`, some crashed (due or in backoff), some
services scaling and some stopping.

    .venv/bin/python bench/planner.py [--services 1000] [--instances 10] [--runs 15]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from corral.control.planner import Observed, build_index, plan, plan_service
from corral.model import Dependency, ExitInfo, InstanceSpec, InstanceStatus, Phase, ServiceRecord

BUDGET_S = 0.200


def fleet(
    n_services: int, per_service: int, seed: int = 1
) -> tuple[dict[str, ServiceRecord], list[Observed]]:
    rng = random.Random(seed)
    services: dict[str, ServiceRecord] = {}
    observed: list[Observed] = []
    now = 10_000.0
    for i in range(n_services):
        name = f"svc{i:04d}"
        pet = i % 2 == 1
        deps = [Dependency(f"svc{i - 1:04d}")] if i % 10 else []
        desired = per_service + (1 if rng.random() < 0.05 else 0)  # a few scaling up
        services[name] = ServiceRecord(
            name=name,
            release=1,
            desired=desired,
            min=1,
            max=20,
            mode="pet" if pet else "cattle",
            depends_on=deps,
            stopping=rng.random() < 0.01,
        )
        for j in range(per_service):
            iid = f"{name}-{j}" if pet else f"{name}-{rng.randrange(36**5):05x}"
            spec = InstanceSpec(
                id=iid,
                service=name,
                release=1,
                node="local",
                created_at=rng.uniform(0, now),
                ordinal=j if pet else None,
            )
            roll = rng.random()
            if roll < 0.03:
                status = InstanceStatus(
                    id=iid,
                    phase="provision",
                    incarnation=1,
                    alive=False,
                    exit=ExitInfo(at=now - rng.uniform(0, 30), reason="exited 1", code=1),
                    consecutive_crashes=rng.randint(1, 7),
                )
            else:
                phase: Phase = "run" if roll < 0.95 else "ready"
                status = InstanceStatus(id=iid, phase=phase, incarnation=1, alive=True)
            observed.append((spec, status))
    return services, observed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    services, observed = fleet(args.services, args.instances)
    now = 10_000.0
    times = []
    result = plan(services, observed, now)  # warm-up
    for _ in range(args.runs):
        start = time.perf_counter()
        result = plan(services, observed, now)
        times.append(time.perf_counter() - start)
    index = build_index(services, observed)
    one = []
    for name in sorted(services)[:200]:
        start = time.perf_counter()
        plan_service(name, index, now)
        one.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(
        f"planner full pass: {args.services} services x {args.instances} instances "
        f"({len(observed)} instances, {len(result.actions)} actions)"
    )
    print(f"  median {median * 1000:.1f} ms, best {min(times) * 1000:.1f} ms over {args.runs} runs")
    print(
        f"  ratio to the {BUDGET_S * 1000:.0f} ms budget: {median / BUDGET_S:.2f}x (< 1 is within)"
    )
    print(f"  one service over a prebuilt index: median {statistics.median(one) * 1e6:.0f} us")


if __name__ == "__main__":
    main()
