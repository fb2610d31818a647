"""Where a run's time goes, per plugin: `apt-kernel run --profile`, and `profile_plugin` for one call.

With profiling on, the kernel times every lifecycle hook and component factory, each callback event
(in the callback dispatcher), the model's forward (torch module hooks), the loss and the data iterator
(wrappers; no plugin object is patched), attributed to the plugin that registered them, and the
trainer's whole `fit` as the reference. With it off nothing is wrapped: zero overhead.
"""

from __future__ import annotations

import json
import math
import resource
import time
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any


def profile_plugin(func: Callable, *args: Any, **kwargs: Any) -> tuple[Any, dict]:
    """Call ``func`` once; return its result and time, CPU time and memory change (psutil)."""
    import psutil

    process = psutil.Process()
    rss, cpu = process.memory_info().rss, process.cpu_times()
    start = time.perf_counter()
    result = func(*args, **kwargs)
    elapsed = time.perf_counter() - start
    after = process.cpu_times()
    cpu_seconds = (after.user - cpu.user) + (after.system - cpu.system)
    return result, {
        "execution_time_s": elapsed,
        "cpu_time_s": cpu_seconds,
        "cpu_percent": 100.0 * cpu_seconds / elapsed if elapsed > 0 else 0.0,
        "memory_delta_mb": (process.memory_info().rss - rss) / 2**20,
        "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class PluginProfiler:
    """Collects durations per (plugin, what) and reports them against the training time."""

    def __init__(self) -> None:
        self.samples: dict[tuple[str, str], list[float]] = {}
        self.phase: dict[tuple[str, str], str] = {}  # "setup" (before fit) or "training"
        self.training = False
        self.fit_seconds: float | None = None

    def record(self, plugin: str, what: str, seconds: float) -> None:
        self.samples.setdefault((plugin, what), []).append(seconds)
        self.phase.setdefault((plugin, what), "training" if self.training else "setup")

    def timed(self, plugin: str, what: str, func: Callable) -> Callable:
        @wraps(func)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.record(plugin, what, time.perf_counter() - start)

        return wrapper

    # -- what gets wrapped ------------------------------------------------------------------------
    def watch_model(self, model: Any, plugin: str, name: str) -> None:
        """Time the forward pass with module hooks (backward runs in autograd, outside any plugin)."""
        if not hasattr(model, "register_forward_pre_hook"):
            return
        starts: list[float] = []
        model.register_forward_pre_hook(lambda module, args: starts.append(time.perf_counter()))
        model.register_forward_hook(
            lambda module, args, output: self.record(plugin, f"model {name}.forward",
                                                     time.perf_counter() - starts.pop()))

    def timed_data(self, data: Any, plugin: str, name: str) -> Any:
        """A stand-in for the data component that times each training batch it produces."""
        return _TimedData(data, self, plugin, f"data {name}.batch")

    # -- report -----------------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        rows = []
        for (plugin, what), times in self.samples.items():
            ordered = sorted(times)
            total = sum(times)
            during = self.phase[(plugin, what)] == "training" and not what.startswith("trainer ")
            rows.append({
                "plugin": plugin, "what": what, "phase": self.phase[(plugin, what)], "count": len(times),
                "total_s": total, "mean_ms": 1000 * total / len(times),
                "p95_ms": 1000 * ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
                "share_of_training": total / self.fit_seconds if during and self.fit_seconds else None,
            })
        return sorted(rows, key=lambda r: r["total_s"], reverse=True)

    def report(self) -> dict:
        per_plugin: dict[str, float] = {}  # time inside each plugin's code during training
        for row in self.rows():
            if row["share_of_training"] is not None:
                per_plugin[row["plugin"]] = per_plugin.get(row["plugin"], 0.0) + row["total_s"]
        return {"training_s": self.fit_seconds, "peak_rss_mb": peak_rss_mb(), "per_plugin_s": per_plugin,
                "rows": self.rows()}

    def save(self, path: Path) -> dict:
        report = self.report()
        path.write_text(json.dumps(report, indent=2))
        return report

    def table(self) -> str:
        header = f"{'plugin':<22} {'what':<42} {'phase':<8} {'count':>6} {'total s':>8} {'mean ms':>9} {'p95 ms':>9}"
        lines = [header + f" {'share':>6}"]
        for row in self.rows():
            share = f"{row['share_of_training']:.1%}" if row["share_of_training"] is not None else "-"
            lines.append(f"{row['plugin']:<22} {row['what'][:42]:<42} {row['phase']:<8} {row['count']:>6} "
                         f"{row['total_s']:>8.3f} {row['mean_ms']:>9.3f} {row['p95_ms']:>9.3f} {share:>6}")
        lines.append(f"training {self.fit_seconds or 0:.2f} s (share is of that); "
                     f"peak memory {peak_rss_mb():.0f} MiB RSS")
        return "\n".join(lines)


class _TimedData:
    """Delegates everything to the data component; times ``train_batches`` one batch at a time."""

    def __init__(self, data: Any, profiler: PluginProfiler, plugin: str, what: str) -> None:
        self._data, self._profiler, self._plugin, self._what = data, profiler, plugin, what

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data, name)

    def train_batches(self, *args: Any, **kwargs: Any) -> Iterator:
        batches = iter(self._data.train_batches(*args, **kwargs))
        while True:
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            self._profiler.record(self._plugin, self._what, time.perf_counter() - start)
            yield batch
