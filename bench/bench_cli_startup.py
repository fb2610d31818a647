"""Start-up cost of the CLI: `apt-kernel --help` cold, and `plugins list` / `validate` with 100 extra
plugins installed (fake distributions with manifests on PYTHONPATH). Medians of several runs, each a
fresh process, so imports are paid every time.

    python bench/bench_cli_startup.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import TINY_PIPELINE, make_plugin  # noqa: E402


def timed(args: list[str], env: dict, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(args, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"{args} failed: {proc.stderr}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--plugins", type=int, default=100)
    args = parser.parse_args()
    exe = [str(Path(sys.executable).parent / "apt-kernel")]
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        for i in range(args.plugins):
            make_plugin(site, f"bench-plugin-{i}", "raise RuntimeError('never imported')\n",
                        f'kernel_api = "^1.0"\n[provides.callback.bench-cb-{i}]\nsummary = "x"\n'
                        f'options.every = {{ type = "int", default = 1 }}\n')
        pipeline = Path(tmp) / "p.toml"
        pipeline.write_text(TINY_PIPELINE.format(out=f"{tmp}/run"))
        base = dict(os.environ, APT_KERNEL_HOME=f"{tmp}/home")
        many = dict(base, PYTHONPATH=str(site))
        rows = [
            ("python -c pass (interpreter floor)", timed([sys.executable, "-c", "pass"], base, args.repeats)),
            ("apt-kernel --help", timed(exe + ["--help"], base, args.repeats)),
            ("apt-kernel plugins list (builtin only)", timed(exe + ["plugins", "list"], base, args.repeats)),
            (f"apt-kernel plugins list (+{args.plugins} plugins)",
             timed(exe + ["plugins", "list"], many, args.repeats)),
            (f"apt-kernel validate (+{args.plugins} plugins)", timed(exe + ["validate", str(pipeline)], many,
                                                                     args.repeats)),
        ]
    for name, seconds in rows:
        print(f"{name:<45} {seconds * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
