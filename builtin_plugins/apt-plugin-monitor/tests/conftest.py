"""Every test here gets its own plugin-status memory and no APT_*_PLUGINS selection (the SDK's apt_isolated_env)."""

from apt_sdk.isolation import apt_isolate_every_test  # noqa: F401
