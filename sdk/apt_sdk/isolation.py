"""Opt in, for a whole folder of tests, to ``apt_isolated_env``: one line in its ``conftest.py``::

    from apt_sdk.isolation import apt_isolate_every_test  # noqa: F401

Kept out of ``apt_sdk.testing``, which pytest loads in every session where the SDK is installed: an autouse
fixture there would rewrite ``APT_KERNEL_HOME`` and drop ``APT_*_PLUGINS`` in everyone's tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def apt_isolate_every_test(apt_isolated_env: Path) -> Path:
    """Every test in the folder of the conftest that imports this gets ``apt_isolated_env``."""
    return apt_isolated_env
