"""What crosses the sandbox boundary: length-prefixed JSON messages on an AF_UNIX socket, and tensors
as memfd file descriptors passed alongside (SCM_RIGHTS) and mapped by the other side. Nothing is ever
unpickled: a worker can send only JSON and bytes it fills in itself."""

from __future__ import annotations

import json
import mmap
import os
import socket
import struct
from typing import Any

MAX_MESSAGE = 64 << 20  # a message larger than this is a broken or hostile worker
MAX_FDS = 64
_HEADER = struct.Struct("!II")  # JSON length, number of fds


class ProtocolError(Exception):
    """The other side sent something that is not a message (closed, too large, not JSON)."""


def _encode(value: Any, buffers: list) -> Any:
    if isinstance(value, dict):
        return {str(k): _encode(v, buffers) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v, buffers) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    tensor = _as_array(value)
    if tensor is not None:
        buffers.append(tensor)
        array, dtype = tensor
        return {"__tensor__": len(buffers) - 1, "dtype": dtype, "shape": list(array.shape)}
    raise TypeError(f"not plain data: {type(value).__name__} (only dict, list, str, numbers, bool, None, tensors)")


def _as_array(value: Any):
    """(C-contiguous numpy array, dtype name) for a numpy array or torch tensor, else None."""
    module = type(value).__module__
    if module.startswith("torch"):
        value = value.detach().cpu().contiguous()
        dtype = str(value.dtype).removeprefix("torch.")
        if dtype == "bfloat16":
            return value.view(__import__("torch").int16).numpy(), dtype
        return value.numpy(), dtype
    if module == "numpy" and hasattr(value, "dtype") and hasattr(value, "shape"):
        import numpy as np

        return np.ascontiguousarray(value), str(value.dtype)
    return None


def _memfd(array) -> int:
    fd = os.memfd_create("apt-tensor", os.MFD_CLOEXEC)
    size = array.nbytes
    os.ftruncate(fd, max(size, 1))
    if size:
        with mmap.mmap(fd, size) as mapped:
            mapped[:] = memoryview(array).cast("B")
    return fd


def send(sock: socket.socket, message: dict) -> None:
    buffers: list = []
    payload = json.dumps(_encode(message, buffers), allow_nan=True, separators=(",", ":")).encode()
    if len(payload) > MAX_MESSAGE:
        raise ValueError(f"message of {len(payload)} bytes is over the {MAX_MESSAGE} byte limit")
    fds = [_memfd(array) for array, _ in buffers]
    try:
        header = _HEADER.pack(len(payload), len(fds))
        if fds:
            socket.send_fds(sock, [header + payload], fds)
        else:
            sock.sendall(header + payload)
    finally:
        for fd in fds:
            os.close(fd)


def _recv_exact(sock: socket.socket, size: int, fds: list[int]) -> bytes:
    chunks, left = [], size
    while left:
        data, new_fds, _, _ = socket.recv_fds(sock, min(left, 1 << 20), MAX_FDS)
        fds.extend(new_fds)
        if not data:
            raise ProtocolError("connection closed")
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


def recv(sock: socket.socket, tensors: str = "torch") -> dict:
    """One message; tensors come back as torch tensors (host) or read-only numpy arrays (worker)."""
    fds: list[int] = []
    try:
        length, count = _HEADER.unpack(_recv_exact(sock, _HEADER.size, fds))
        if length > MAX_MESSAGE or count > MAX_FDS:
            raise ProtocolError(f"message header out of bounds ({length} bytes, {count} fds)")
        payload = _recv_exact(sock, length, fds)
        if len(fds) != count:
            raise ProtocolError(f"expected {count} tensor buffers, got {len(fds)}")
        try:
            message = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"not JSON: {exc}") from None
        if not isinstance(message, dict):
            raise ProtocolError("not a JSON object")
        return _decode(message, fds, tensors)
    finally:
        for fd in fds:
            os.close(fd)


def _decode(value: Any, fds: list[int], tensors: str) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return _tensor(value, fds, tensors)
        return {k: _decode(v, fds, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, fds, tensors) for v in value]
    return value


def _tensor(spec: dict, fds: list[int], kind: str):
    import numpy as np

    try:
        fd, dtype, shape = fds[int(spec["__tensor__"])], str(spec["dtype"]), [int(n) for n in spec["shape"]]
        np_dtype = np.dtype("int16" if dtype == "bfloat16" else dtype)
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad tensor spec {spec!r}: {exc}") from None
    size = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    if size < 0 or size > os.fstat(fd).st_size:
        raise ProtocolError(f"tensor of {size} bytes does not fit its buffer")
    if size == 0:
        array = np.zeros(shape, dtype=np_dtype)
    else:  # a private copy-on-write mapping: no copy now, and the sender's buffer can never change it
        mapped = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        array = np.frombuffer(mapped, dtype=np_dtype).reshape(shape)
    if kind != "torch":
        array.flags.writeable = False  # a read-only view for the plugin
        return array
    import torch

    out = torch.from_numpy(array)
    return out.view(torch.bfloat16) if dtype == "bfloat16" else out
