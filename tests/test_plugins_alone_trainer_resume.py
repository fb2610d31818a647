"""The trainer's tests of kills and exact resumes (test_exact_resume.py), in an environment holding only
what the trainer declares: see test_plugins_alone.py (this file exists so pytest-xdist can run them beside
the other plugins' tests)."""

import pytest
from test_plugins_alone import run_plugin_tests

pytestmark = pytest.mark.slow_tier  # as every test of that file


def test_the_trainers_resume_tests_pass_with_only_what_it_declares(tmp_path, request):
    run_plugin_tests("apt-plugin-trainer", tmp_path, request, only=("test_exact_resume.py",))
