"""A tiny harness: repeat a callable, keep the median, compare against a baseline in the same run.

Machines here are noisy, so every figure is the median of several repeats, and every claim is a
ratio against a baseline measured in the same process, minutes apart at most.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: The demo cube (``make demo``) that benchmarks measure when it exists.
DEMO_CUBE = Path(__file__).resolve().parents[1] / "build" / "demo.zarr"


@dataclass(frozen=True)
class Measurement:
    """One benchmark case.

    Attributes:
        bench: Benchmark group, e.g. ``"codecs"``.
        case: What was measured, e.g. ``"blosc-lz4-bitshuffle decode"``.
        baseline: The case this one is compared with (``None`` for the baseline itself).
        median_s: Median wall time of one repeat in seconds.
        repeats: How many repeats were timed.
        unit_count: Work units per repeat (bytes, samples, tiles...).
        unit: Name of the work unit.
        ratio: ``baseline_median / median`` (speed-up over the baseline; > 1 is faster).
        extra: Free-form figures (sizes, compression ratios...).
    """

    bench: str
    case: str
    baseline: str | None
    median_s: float
    repeats: int
    unit_count: float
    unit: str
    ratio: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        """Work units per second (median)."""
        return self.unit_count / self.median_s if self.median_s > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form including the throughput."""
        out = asdict(self)
        out["throughput"] = self.throughput
        return out


def time_all(fn: Callable[[], object], repeats: int = 7, warmup: int = 1) -> list[float]:
    """Wall times of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def time_median(fn: Callable[[], object], repeats: int = 7, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    return statistics.median(time_all(fn, repeats, warmup))


def with_ratios(results: list[Measurement]) -> list[Measurement]:
    """Fill ``ratio`` of every measurement from its baseline in the same list."""
    by_case = {(m.bench, m.case): m for m in results}
    out = []
    for m in results:
        ratio = None
        if m.baseline is not None:
            base = by_case.get((m.bench, m.baseline))
            if base is not None and m.median_s > 0:
                ratio = base.median_s / m.median_s
        out.append(
            Measurement(
                m.bench,
                m.case,
                m.baseline,
                m.median_s,
                m.repeats,
                m.unit_count,
                m.unit,
                ratio,
                m.extra,
            )
        )
    return out
