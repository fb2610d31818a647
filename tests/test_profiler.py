"""The plugin profiler: profile_plugin for one call, `run --profile` per plugin, nothing when off."""

import json
import mmap
import time

from apt_kernel.profiler import PluginProfiler, profile_plugin
from apt_kernel.runner import run_pipeline
from conftest import cli


def test_profile_plugin_measures_time_cpu_and_memory():
    def work(n):
        block = bytearray(n)  # touched memory: RSS grows
        for i in range(0, n, 4096):
            block[i] = 1
        time.sleep(0.05)
        return len(block)

    result, metrics = profile_plugin(work, 64 * 2**20)
    assert result == 64 * 2**20
    assert metrics["execution_time_s"] >= 0.05
    assert 50 < metrics["peak_delta_mb"] < 200  # the call's own 64 MiB, not the process's lifetime peak
    assert 0 <= metrics["cpu_time_s"] <= metrics["execution_time_s"] + 0.05
    assert set(metrics) == {"execution_time_s", "cpu_time_s", "cpu_percent", "memory_delta_mb", "peak_rss_mb",
                            "peak_delta_mb"}


def _touch(megabytes: int) -> int:
    """Make ``megabytes`` newly resident. An anonymous mapping is new pages whatever ran before; a bytearray of
    30 MiB is not: after earlier large frees glibc raises its mmap threshold and serves it from heap that is
    already resident, so RSS does not rise (what "peak" cannot see, docs/observability.md)."""
    block = mmap.mmap(-1, megabytes * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    size = len(block)
    block.close()
    return size


def _churn_the_heap() -> None:
    """What earlier tests in the same worker may have done: large allocations freed again."""
    for _ in range(3):
        block = bytearray(30 * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        del block


def test_the_peak_is_the_calls_own_not_the_processes_lifetime_peak():
    from apt_kernel.profiler import peak_rss_mb

    _churn_the_heap()
    _touch(400)  # the process's lifetime peak is now at least 400 MiB above what it holds
    lifetime = peak_rss_mb()
    _, small = profile_plugin(_touch, 40)
    assert 30 < small["peak_delta_mb"] < 120, small
    assert small["peak_rss_mb"] < lifetime - 200  # not the lifetime high-water mark


def test_plugin_profiler_profiles_calls_and_aggregates_them_per_plugin():
    _churn_the_heap()  # the measured calls must not depend on what ran before them in this process
    profiler = PluginProfiler()
    assert profiler.profile_plugin(_touch, 30) == 30 * 2**20
    assert profiler.profile_plugin(_touch, 10) == 10 * 2**20

    def failing():
        raise ValueError("no")

    try:
        profiler.profile_plugin(failing)
    except ValueError:
        pass
    stats = profiler.get_plugin_stats("_touch")
    assert stats["calls"] == 2 and stats["failures"] == 0
    assert stats["total_time_s"] >= stats["max_time_s"] >= stats["mean_time_s"] > 0
    assert 20 < stats["max_peak_delta_mb"] < 100
    assert profiler.get_plugin_stats("failing")["failures"] == 1
    try:
        profiler.get_plugin_stats("nobody")
    except KeyError as exc:
        assert "profiled: _touch, failing" in str(exc)
    else:
        raise AssertionError("an unknown plugin name must be a KeyError")


def test_percentiles_and_report():
    profiler = PluginProfiler()
    profiler.training = True
    for ms in range(1, 101):
        profiler.record("p", "callback x.on_train_batch_end", ms / 1000)
    profiler.fit_seconds = 10.0
    (row,) = profiler.rows()
    assert row["count"] == 100 and abs(row["p95_ms"] - 95) < 1e-9 and abs(row["mean_ms"] - 50.5) < 1e-9
    assert abs(row["share_of_training"] - 0.505) < 1e-9
    assert profiler.report()["per_plugin_s"] == {"p": row["total_s"]}


def test_run_profile_times_each_plugin(tiny_pipeline, tmp_path):
    tiny_pipeline.write_text(tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "text-samples"\nmax_new_tokens = 5\n')
    result = cli("run", str(tiny_pipeline), "--no-progress", "--profile")
    assert result.returncode == 0, result.stderr
    assert "Profile (also in" in result.stdout and "share" in result.stdout
    report = json.loads((tmp_path / "run" / "profile.json").read_text())
    rows = {(r["plugin"], r["what"]): r for r in report["rows"]}
    assert rows[("apt-plugin-lm", "data text.batch")]["count"] == 4  # one batch per step, 4 steps
    assert rows[("apt-plugin-lm", "loss lm-cross-entropy")]["count"] == 4 + 2  # + 2 validation batches
    assert rows[("apt-plugin-lm", "model apt-lm.forward")]["count"] >= 6
    assert rows[("apt-plugin-lm", "callback text-samples.on_fit_start")]["count"] == 1
    assert ("apt-plugin-lm", "callback text-samples.on_micro_batch_end") not in rows  # a no-op: not wrapped
    assert rows[("apt-plugin-lm", "hook seed_everything")]["phase"] == "setup"
    assert rows[("apt-plugin-trainer", "trainer apt-trainer.fit")]["total_s"] == report["training_s"]
    shares = [r["share_of_training"] for r in report["rows"] if r["share_of_training"] is not None]
    assert shares and all(0 <= s <= 1 for s in shares)
    assert report["peak_rss_mb"] > 50


def test_profiling_off_wraps_nothing(tiny_pipeline, tmp_path):
    result, context = run_pipeline(tiny_pipeline)
    assert not context.model._forward_hooks and not context.model._forward_pre_hooks
    assert type(context.loss).__name__ == "LMCrossEntropy"
    assert not (tmp_path / "run" / "profile.json").exists() and "profile" not in result
