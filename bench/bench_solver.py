"""Solve time of the plugin version solver for 10 / 100 / 1000 plugins with 5 versions each.

Each plugin ``p{i}`` has versions 1.0.0 .. 1.4.0; version 1.k requires up to three lower-numbered
plugins with caret or PEP 440 ranges and the kernel API ``^1``. The newest version of every tenth
plugin requires a kernel API that does not exist, so the solver has to backtrack there.
The pipeline needs every plugin. Prints the median of several runs per size.

    python bench/bench_solver.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from apt_kernel.solver import Catalog, solve


def build_catalog(n: int, versions: int = 5, seed: int = 0) -> Catalog:
    rng = random.Random(seed)
    catalog = Catalog("1.0.0")
    for i in range(n):
        for k in range(versions):
            deps = {}
            for j in rng.sample(range(i), min(i, 3)):
                deps[f"p{j}"] = rng.choice(["^1.0", ">=1.1,<2", "~1.2", "*"])
            api = "^2" if (i % 10 == 0 and k == versions - 1) else "^1"
            catalog.add(f"p{i}", f"1.{k}.0", deps, api)
    return catalog


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"{'plugins':>8} {'versions':>8} {'median s':>10} {'min s':>8}")
    for n in (10, 100, 1000):
        catalog = build_catalog(n)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = solve(catalog, {f"p{i}": "*" for i in range(n)})
            times.append(time.perf_counter() - start)
        assert len(result) == n + 1
        print(f"{n:>8} {5:>8} {statistics.median(times):>10.4f} {min(times):>8.4f}")


if __name__ == "__main__":
    main()
