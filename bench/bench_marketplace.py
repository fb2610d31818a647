"""Marketplace server latency and pip install time, on loopback.

1. ``/simple/<name>/`` latency at 50 concurrent clients, each issuing requests back to back, p50 and p99
   over all requests, for the HTML and the PEP 691 JSON form; medians of ``--rounds`` rounds. The load
   comes from ``wrk`` (Debian's package: a C client, so the clients take little of the 2 cores the
   server runs on) where installed, else from asyncio + httpx in this process (slower, and its own
   scheduling shows in the tail).
2. ``pip install --no-deps --target`` of the same wheel from our index vs from a local folder
   (``--no-index --find-links``), alternating, median seconds over ``--rounds``.

    .venv/bin/python bench/bench_marketplace.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "builtin_plugins" / "apt-plugin-marketplace" / "tests"))

from apt_plugin_marketplace.client import PluginMarketplace  # noqa: E402
from conftest import Server  # noqa: E402  (the tests' server fixture: the real `marketplace serve`)


async def _client(url: str, headers: dict, until: float, latencies: list[float]) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        while time.perf_counter() < until:
            start = time.perf_counter()
            response = await http.get(url, headers=headers)
            latencies.append(time.perf_counter() - start)
            assert response.status_code == 200


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def load_round(url: str, headers: dict, clients: int, seconds: float) -> tuple[float, float, int]:
    if shutil.which("wrk"):
        extra = [arg for key, value in headers.items() for arg in ("-H", f"{key}: {value}")]
        out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{round(seconds)}s", "--latency", *extra, url],
                             capture_output=True, text=True, check=True).stdout
        p50 = _ms(re.search(r"50%\s+(\S+)", out).group(1))
        p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))
        return p50, p99, int(re.search(r"(\d+) requests in", out).group(1))
    latencies: list[float] = []

    async def main() -> None:
        until = time.perf_counter() + seconds
        await asyncio.gather(*(_client(url, headers, until, latencies) for _ in range(clients)))

    asyncio.run(main())
    ordered = sorted(latencies)
    return ordered[len(ordered) // 2] * 1e3, ordered[int(len(ordered) * 0.99)] * 1e3, len(ordered)


def pip_time(args: list[str]) -> float:
    target = tempfile.mkdtemp()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-cache-dir",
                           "--disable-pip-version-check", "--target", target, *args], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    shutil.rmtree(target)
    assert done.returncode == 0, done.stderr
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-market-"))
    os.environ["APT_KERNEL_HOME"] = str(work / "home")
    wheels = work / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(REPO / "builtin_plugins" / "apt-plugin-vision")], check=True, capture_output=True)
    wheel = next(wheels.glob("*.whl"))
    server = Server(work / "storage", f"sqlite:///{work / 'market.db'}").start()
    try:
        PluginMarketplace(server.url, server.user("bench")).publish_plugin(wheel)
        page = server.url + "simple/apt-plugin-vision/"
        tool = "wrk" if shutil.which("wrk") else "asyncio + httpx"
        print(f"{args.clients} concurrent clients ({tool}), {args.seconds:.0f} s per round, {args.rounds} rounds "
              f"({os.cpu_count()} cores, server and clients on this machine)")
        for label, headers in (("HTML", {}), ("PEP 691 JSON", {"Accept": "application/vnd.pypi.simple.v1+json"})):
            rounds = [load_round(page, headers, args.clients, args.seconds) for _ in range(args.rounds)]
            p50 = statistics.median(r[0] for r in rounds)
            p99 = statistics.median(r[1] for r in rounds)
            rate = statistics.median(r[2] for r in rounds) / args.seconds
            print(f"/simple/<name>/ {label:<13} p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   {rate:6.0f} req/s")
        ours, local = [], []
        for _ in range(args.rounds):
            ours.append(pip_time(["--index-url", server.url + "simple/", "apt-plugin-vision"]))
            local.append(pip_time(["--no-index", "--find-links", str(wheels), "apt-plugin-vision"]))
        print(f"pip install from our index {statistics.median(ours):.2f} s, from a local folder "
              f"{statistics.median(local):.2f} s, ratio {statistics.median(ours) / statistics.median(local):.2f}")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
