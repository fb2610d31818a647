"""``apt-kernel plugins doctor``: import each plugin in its own child process, so a crash stays there."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from .discovery import CRASHED, FAILED, INSTALLED, PluginInfo, StatusStore

# Runs in the child: load one plugin through the real kernel path and print what it registered.
_CHILD = """
import json, sys
from apt_kernel.kernel import Kernel
from apt_kernel.kinds import KINDS
kernel = Kernel(plugins_dirs=json.loads(sys.argv[2]), strict=False)
kernel.load([sys.argv[1]])
info = kernel.plugins[sys.argv[1]]
names = {k: kernel.registry.names(k) for k in KINDS}
missing = kernel.unregistered(info.name) if info.status == "installed" else []
if missing:
    info.status = "failed"
    info.reason = f"declares {', '.join(missing)} in its manifest but did not register it"
print("APT-DOCTOR " + json.dumps({"status": info.status, "reason": info.reason,
      "registered": {k: v for k, v in names.items() if v}}))
"""


def check_plugin(info: PluginInfo, plugins_dirs: list[str], timeout: float = 120.0) -> dict:
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, info.name, json.dumps(plugins_dirs)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": FAILED, "reason": f"import did not finish within {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("APT-DOCTOR "):
            return json.loads(line[len("APT-DOCTOR "):])
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return {"status": CRASHED, "reason": f"the import crashed the process ({name})"}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": FAILED, "reason": f"exited with code {proc.returncode} while importing: {tail}"}


def run_doctor(infos: list[PluginInfo], plugins_dirs: list[str], store: StatusStore) -> list[dict]:
    """Check every installed plugin (in parallel child processes) and remember the outcome."""
    checkable = [i for i in infos if i.manifest is not None and i.status in (INSTALLED, FAILED, CRASHED)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = dict(zip([i.name for i in checkable],
                            pool.map(lambda i: check_plugin(i, plugins_dirs), checkable), strict=True))
    report = []
    for info in infos:
        outcome = outcomes.get(info.name, {"status": info.status, "reason": info.reason})
        if info.name in outcomes:
            store.record(info, outcome["status"], outcome.get("reason"))
        report.append({"name": info.name, "version": info.version, **outcome})
    return report
