"""``apt_sdk.pretrained``: a hub id that is not in the cache fails after one request within the hub's metadata timeout,
or none offline (transformers' five retries of every file took 23-31 s offline, and ten minutes behind a proxy that
never answers); a file or an unreadable folder is named."""

from __future__ import annotations

import socket
import threading

import pytest

from apt_sdk import UserError
from apt_sdk.pretrained import HubUnavailable, load_pretrained


class SilentProxy:
    """A proxy that accepts connections and never answers (a hung corporate proxy); it counts the connections."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.connections.append(self.server.accept()[0])
            except OSError:  # closed
                return

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}"

    def close(self) -> None:
        self.server.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture()
def hub_behind(monkeypatch):
    """The hub's client, made again through a proxy; the shared client is dropped after the test."""
    import huggingface_hub
    from huggingface_hub import constants

    proxy = SilentProxy()
    for variable in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(variable, proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)  # the hub's own setting: how long one request waits
    huggingface_hub.close_session()
    yield proxy, constants
    huggingface_hub.close_session()
    proxy.close()


def _not_cached(source: str, local_only: bool):
    raise OSError(f"{source} is not in the cache" if local_only else f"{source} could not be downloaded")


@pytest.mark.parametrize("offline", [False, True])
def test_a_hub_id_without_a_hub_fails_after_one_request_or_none(hub_behind, monkeypatch, offline):
    proxy, constants = hub_behind
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    name = "apt-kernel-tests/no-such-model"
    with pytest.raises(HubUnavailable) as caught:
        load_pretrained(name, _not_cached, "CLIP")
    reason = ("it is not in the Hugging Face cache and HF_HUB_OFFLINE is set" if offline else
              "the Hugging Face hub could not be reached within 1 s")
    assert f"cannot load {name!r}" in str(caught.value) and reason in str(caught.value), caught.value
    assert f"hf download {name} --local-dir DIR) and pass model_name_or_path=DIR" in str(caught.value)
    assert len(proxy.connections) == (0 if offline else 1)


def test_a_file_and_a_folder_that_does_not_load_are_named(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(UserError, match="is a file: pass the folder save_pretrained wrote"):
        load_pretrained(str(tmp_path / "weights.bin"), _not_cached, "CLIP")
    with pytest.raises(UserError, match=r"cannot load Whisper weights from folder .*: .* is not in the cache"):
        load_pretrained(str(tmp_path), _not_cached, "Whisper")
