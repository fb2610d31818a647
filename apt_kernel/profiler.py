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


class _PeakDuring:
    """The process's peak RSS during a call, not over its lifetime: Linux resets its high-water mark
    (VmHWM) when "5" is written to /proc/self/clear_refs (so ``peak_rss_mb()`` afterwards counts from
    there); elsewhere a thread samples RSS every 2 ms."""

    def __init__(self, process) -> None:
        self.process, self.peak, self._thread = process, 0, None
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.exact = True
        except OSError:
            self.exact = False

    def __enter__(self) -> _PeakDuring:
        self.peak = self.process.memory_info().rss
        if not self.exact:
            import threading

            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        if self.exact:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)
        self.peak = max(self.peak, self.process.memory_info().rss)


def profile_plugin(func: Callable, *args: Any, **kwargs: Any) -> tuple[Any, dict]:
    """Call ``func`` once; return its result and its time, CPU time, memory change and the peak
    memory while it ran (``peak_rss_mb``; ``peak_delta_mb`` above the RSS it started with)."""
    import psutil

    process = psutil.Process()
    rss, cpu = process.memory_info().rss, process.cpu_times()
    with _PeakDuring(process) as peak:
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
        "peak_rss_mb": peak.peak / 2**20,
        "peak_delta_mb": (peak.peak - rss) / 2**20,
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
        self.calls: dict[str, list[dict]] = {}  # profile_plugin's measurements, per plugin name

    # -- the original API: profile one call, then ask for the plugin's statistics ---------------------
    def profile_plugin(self, plugin_func: Callable, *args: Any, **kwargs: Any) -> Any:
        """Call ``plugin_func(*args, **kwargs)``, measure it (``profile_plugin``) under its name, return its
        result. The measurement is kept even when the call raises."""
        name = getattr(plugin_func, "__name__", type(plugin_func).__name__)
        started = time.perf_counter()
        try:
            result, stats = profile_plugin(plugin_func, *args, **kwargs)
        except BaseException:
            self.calls.setdefault(name, []).append({"execution_time_s": time.perf_counter() - started,
                                                    "failed": True})
            raise
        self.calls.setdefault(name, []).append(stats)
        self.record(name, "profile_plugin call", stats["execution_time_s"])
        return result

    def get_plugin_stats(self, plugin_name: str) -> dict:
        """Aggregates over every ``profile_plugin`` call of ``plugin_name``: calls, failures, total / mean /
        max time, CPU time, the highest peak RSS and the largest rise above the starting RSS."""
        if plugin_name not in self.calls:
            known = ", ".join(sorted(self.calls)) or "none yet"
            raise KeyError(f"no profiled calls of {plugin_name!r} (profiled: {known})")
        calls = self.calls[plugin_name]
        ok = [c for c in calls if not c.get("failed")]
        times = [c["execution_time_s"] for c in calls]
        return {
            "calls": len(calls), "failures": len(calls) - len(ok), "total_time_s": sum(times),
            "mean_time_s": sum(times) / len(times), "max_time_s": max(times),
            "cpu_time_s": sum(c["cpu_time_s"] for c in ok),
            "peak_rss_mb": max((c["peak_rss_mb"] for c in ok), default=None),
            "max_peak_delta_mb": max((c["peak_delta_mb"] for c in ok), default=None),
        }

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
