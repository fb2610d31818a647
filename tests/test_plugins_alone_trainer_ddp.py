"""The trainer's tests of DDP and FSDP under torchrun (test_ddp_and_fsdp.py), in an environment holding only
what the trainer declares: see test_plugins_alone.py (this file exists so pytest-xdist can run them beside
the other plugins' tests)."""

import pytest
from test_plugins_alone import run_plugin_tests

pytestmark = pytest.mark.slow_tier  # as every test of that file


def test_the_trainers_ddp_tests_pass_with_only_what_it_declares(tmp_path, request):
    run_plugin_tests("apt-plugin-trainer", tmp_path, request, only=("test_ddp_and_fsdp.py",))
