"""What the benchmarks share: one unit of work run on threads for a fixed time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from mssql_pool.testing import TdsServer


def run_threads(server: TdsServer, step: Callable[[int], None], threads: int,
                seconds: float, label: str) -> tuple[float, float]:
    """``step(n)`` on ``threads`` threads for ``seconds`` (thread k runs n = k, k +
    threads, k + 2 * threads...): (units per second, ``server``'s requests per unit). A
    thread's first error ends that thread and is raised after the run, named ``label``."""
    stop = threading.Event()
    counts = [0] * threads
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        n = k
        try:
            while not stop.is_set():
                step(n)
                n += threads
                counts[k] += 1
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(k,), name=f"bench-{label}-{k}",
                                daemon=True) for k in range(threads)]
    before = server.stats()["requests"]
    start = time.perf_counter()
    for t in workers:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in workers:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{label}: {errors[0]!r}") from errors[0]
    done = sum(counts)
    return done / elapsed, (server.stats()["requests"] - before) / max(done, 1)
