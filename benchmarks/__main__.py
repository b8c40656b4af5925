"""Run every benchmark, print one table of ratios, write ``benchmarks/results/latest.json``.

Usage: ``python -m benchmarks [--quick] [--only NAME ...]``. Each ``bench_*.py`` module exposes
``NAME`` and ``run(quick: bool) -> list[Measurement]``; ratios compare cases measured in this run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks._harness import Measurement, with_ratios

RESULTS = Path(__file__).resolve().parent / "results"


def _modules() -> list[str]:
    pkg = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(pkg)]) if m.name.startswith("bench_"))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``make bench``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller inputs")
    parser.add_argument("--only", nargs="*", default=None, help="benchmark NAMEs to run")
    args = parser.parse_args(argv)
    console = Console(width=170)
    all_results: list[Measurement] = []
    for modname in _modules():
        mod = importlib.import_module(f"benchmarks.{modname}")
        if args.only and mod.NAME not in args.only:
            continue
        console.print(f"[bold]running {mod.NAME}[/] ({modname})")
        t0 = time.perf_counter()
        all_results.extend(with_ratios(mod.run(quick=args.quick)))
        console.print(f"  done in {time.perf_counter() - t0:.1f} s")
    table = Table(title="eoforge benchmarks (medians; ratio = baseline time / case time)")
    for col in ("bench", "case", "median", "throughput", "vs baseline", "ratio", "extra"):
        table.add_column(col)
    for m in all_results:
        table.add_row(
            m.bench,
            m.case,
            f"{m.median_s * 1e3:.2f} ms",
            f"{m.throughput:.1f} {m.unit}/s",
            m.baseline or "(baseline)",
            f"{m.ratio:.2f}x" if m.ratio is not None else "",
            ", ".join(f"{k}={v}" for k, v in m.extra.items()),
        )
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "created_unix": time.time(),
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "quick": args.quick,
        "results": [m.to_dict() for m in all_results],
    }
    (RESULTS / "latest.json").write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {RESULTS / 'latest.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
