"""The marketplace plugin's own tests, in an environment holding only what it declares: see
test_plugins_alone.py (this file exists so pytest-xdist can run them beside the other plugins' tests)."""

from test_plugins_alone import run_plugin_tests


def test_the_marketplace_plugins_own_tests_pass_with_only_what_it_declares(tmp_path, request):
    run_plugin_tests("apt-plugin-marketplace", tmp_path, request)
