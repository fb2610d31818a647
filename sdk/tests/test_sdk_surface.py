"""The SDK is the contract and test helpers: what it imports of the kernel is the contract's modules, and, for
test helpers that run pipelines, the kernel's public API (``apt_kernel.api``), nothing else."""

import ast
import subprocess
import sys
from pathlib import Path

SDK = Path(__file__).resolve().parent.parent / "apt_sdk"
CONTRACT = {"apt_kernel", "apt_kernel.callbacks", "apt_kernel.context", "apt_kernel.errors", "apt_kernel.hookspecs",
            "apt_kernel.kinds", "apt_kernel.protocols"}
PUBLIC_API = "apt_kernel.api"


def _kernel_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "apt_kernel":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "apt_kernel"}
    return found


def test_the_sdk_imports_only_the_contract_and_the_public_kernel_api():
    for path in sorted(SDK.glob("*.py")):
        allowed = CONTRACT | {PUBLIC_API}
        assert _kernel_imports(path) <= allowed, f"{path.name} imports {_kernel_imports(path) - allowed}"


def test_importing_the_sdk_loads_only_the_contract():
    code = "import sys, apt_sdk; print(sorted(m for m in sys.modules if m.startswith('apt_kernel')))"
    loaded = set(ast.literal_eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                 check=True).stdout))
    assert loaded <= CONTRACT, loaded - CONTRACT


def test_run_pipeline_comes_from_the_public_api():
    import apt_kernel.api
    import apt_sdk

    assert apt_sdk.run_pipeline is apt_kernel.api.run_pipeline
    assert apt_sdk.check_pipeline is apt_kernel.api.check_pipeline
