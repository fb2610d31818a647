"""APT Kernel plugin marketplace: the index server (``create_app``), its client (``PluginMarketplace``),
plugin installs as revisions (``PluginVersionManager``) and in-process loading (``PluginLoader``).

Names are imported on first use: the client commands and the doctor's import of this plugin must not pay
for FastAPI and SQLAlchemy, which only the server needs (0.7 s per process).
"""

from importlib import import_module

_WHERE = {"create_app": "server", "PluginMarketplace": "client", "MarketplaceError": "client",
          "PluginVersionManager": "manager", "PluginLoader": "loader"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
