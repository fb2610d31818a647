"""``PluginMarketplace``: the original client API, speaking to a marketplace server over HTTP.

The server and token come from the arguments, else ``APT_MARKETPLACE_URL`` / ``APT_MARKETPLACE_TOKEN``,
else ``$APT_KERNEL_HOME/marketplace.toml`` (``url = "..."``, ``token = "..."``).
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from pathlib import Path
from typing import Any

import httpx

from apt_kernel.api import KERNEL_API_VERSION, discover, kernel_home
from apt_sdk import UserError

from .distfile import BadDistribution, check_filename

DEFAULT_URL = "http://127.0.0.1:8765/"


class MarketplaceError(UserError):
    """The server refused a request or could not be reached; the message is the server's reason."""


def _config() -> dict:
    path = kernel_home() / "marketplace.toml"
    try:
        return tomllib.loads(path.read_text()) if path.exists() else {}
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not TOML: {exc}") from None


def installed_versions() -> dict[str, str]:
    """name -> version of every plugin this process's environment has, however it was installed."""
    return {info.name: info.version for info in discover() if info.distribution}


class PluginMarketplace:
    def __init__(self, server_url: str | None = None, token: str | None = None, timeout: float = 60.0) -> None:
        config = _config()
        url = server_url or os.environ.get("APT_MARKETPLACE_URL") or config.get("url") or DEFAULT_URL
        self.server_url = url.rstrip("/") + "/"
        self.token = token or os.environ.get("APT_MARKETPLACE_TOKEN") or config.get("token")
        self.http = httpx.Client(base_url=self.server_url, timeout=timeout)

    def _request(self, method: str, path: str, auth: bool = False, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if auth:
            if not self.token:
                raise MarketplaceError("no marketplace token: pass one, set APT_MARKETPLACE_TOKEN, or put "
                                       "token = \"...\" in $APT_KERNEL_HOME/marketplace.toml")
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = self.http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise MarketplaceError(f"cannot reach the marketplace at {self.server_url}: {exc}") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            if isinstance(detail, list):  # pydantic's validation errors
                detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
            raise MarketplaceError(f"{method} {path}: {response.status_code} {detail}")
        return response

    def search_plugins(self, keyword: str = "", category: str | None = None,
                       compatible_only: bool = False) -> list[dict]:
        """Plugins whose name, summary or description contains ``keyword``; ``category`` is a kind."""
        params = {"q": keyword, **({"kind": category} if category else {})}
        if compatible_only:
            params["kernel_api"] = KERNEL_API_VERSION
        return self._request("GET", "api/search", params=params).json()

    def get_plugin_info(self, name: str) -> dict:
        return self._request("GET", f"api/plugins/{name}").json()

    def compatible(self, name: str, installed: dict[str, str] | None = None,
                   kernel_api: str = KERNEL_API_VERSION) -> dict:
        """``{"name", "version", "plan"}``: the newest version of ``name`` the kernel's solver accepts with
        ``installed`` (default: this environment's plugins) and what else it needs from the index."""
        installed = installed_versions() if installed is None else installed
        pins = [f"{n}=={v}" for n, v in installed.items() if n != name]
        return self._request("GET", f"api/plugins/{name}/compatible",
                             params={"kernel_api": kernel_api, "installed": pins}).json()

    def release_file(self, name: str, version: str) -> dict:
        """The wheel of ``name`` ``version`` (its filename, url, sha256), from the plugin's info."""
        info = self.get_plugin_info(name)
        release = next((r for r in info["releases"] if r["version"] == version), None)
        if release is None:
            raise MarketplaceError(f"{name} has no version {version} (versions: {', '.join(info['versions'])})")
        wheels = [f for f in release["files"] if f["packagetype"] == "bdist_wheel"]
        if not wheels:
            raise MarketplaceError(f"{name} {version} has no wheel to install")
        return {**wheels[0], "manifest": release["manifest"]}

    def download_plugin(self, name: str, version: str = "latest", dest: str | Path | None = None) -> Path:
        """Download a wheel of ``name`` (``latest`` = the newest compatible one); its sha256 is checked
        against the index before the file is kept. Returns the file's path."""
        if version == "latest":
            version = self.compatible(name)["version"]
        return self.fetch(self.release_file(name, version), dest)

    def fetch(self, entry: dict, dest: str | Path | None = None) -> Path:
        """Download the file ``entry`` (from ``release_file``) into ``dest``, kept only if its sha256 matches."""
        folder = Path(dest) if dest else Path.cwd()
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / entry["filename"]
        if target.exists() and _sha256(target) == entry["sha256"]:
            return target
        partial = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        try:
            with self.http.stream("GET", entry["url"].lstrip("/")) as response, partial.open("wb") as out:
                if response.status_code != 200:
                    raise MarketplaceError(f"GET {entry['url']}: {response.status_code}")
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    out.write(chunk)
        except httpx.HTTPError as exc:
            partial.unlink(missing_ok=True)
            raise MarketplaceError(f"download of {entry['filename']} failed: {exc}") from None
        if digest.hexdigest() != entry["sha256"]:
            partial.unlink(missing_ok=True)
            raise MarketplaceError(f"{entry['filename']}: sha256 {digest.hexdigest()} does not match the index's "
                                   f"{entry['sha256']}; the file was discarded")
        partial.replace(target)
        return target

    def publish_plugin(self, package: str | Path, api_key: str | None = None) -> dict:
        """Upload a wheel or sdist through the same legacy API twine uses."""
        path = Path(package)
        if not path.is_file():
            raise UserError(f"{path}: no such file (build one with `python -m build` or `pip wheel`)")
        try:
            name, version, packagetype = check_filename(path.name)
        except BadDistribution as exc:
            raise UserError(str(exc)) from None
        if api_key:
            self.token = api_key
        fields = {":action": "file_upload", "protocol_version": "1", "name": name, "version": str(version),
                  "filetype": packagetype, "pyversion": "py3" if packagetype == "bdist_wheel" else "source",
                  "metadata_version": "2.1", "sha256_digest": _sha256(path)}
        with path.open("rb") as handle:
            return self._request("POST", "legacy/", auth=True, data=fields,
                                 files={"content": (path.name, handle, "application/octet-stream")}).json()

    def rate_plugin(self, name: str, rating: int, comment: str = "") -> dict:
        return self._request("POST", f"api/plugins/{name}/ratings", auth=True,
                             json={"stars": rating, "comment": comment}).json()

    def yank_plugin(self, name: str, version: str, reason: str = "") -> dict:
        return self._request("POST", f"api/plugins/{name}/yank", auth=True,
                             json={"version": version, "reason": reason}).json()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
