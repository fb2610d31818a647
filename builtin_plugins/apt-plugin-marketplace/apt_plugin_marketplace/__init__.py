"""APT Kernel plugin marketplace: the index server (``create_app``), its client (``PluginMarketplace``),
plugin installs as revisions (``PluginVersionManager``) and in-process loading (``PluginLoader``)."""

from .server import create_app

__all__ = ["create_app"]
