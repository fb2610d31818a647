"""What crosses the sandbox boundary: length-prefixed JSON messages on an AF_UNIX socket, and tensors
as memfd file descriptors passed alongside (SCM_RIGHTS) and mapped by the other side. Nothing is ever
unpickled: a worker can send only JSON and bytes it fills in itself."""

from __future__ import annotations

import fcntl
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


SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def _memfd(array) -> int:
    """A sealed memfd holding the array's bytes: once sent, nobody (the sender included) can change it,
    so the receiver may map it instead of copying it."""
    fd = os.memfd_create("apt-tensor", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    data = memoryview(array).cast("B") if array.nbytes else memoryview(b"\0")
    while data:
        data = data[os.write(fd, data):]
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    return fd


class BufferPool:
    """Shared buffers the host reuses to send tensors to its worker: after the first call their pages
    exist, so sending is one memcpy instead of allocating fresh pages (5-10x faster for 16 MiB). Only
    the trusted side may use it: the worker's views of a pooled buffer change when the host reuses it
    for a later call (a view is valid during its call; copy to keep), and the host never maps a buffer
    the worker can still write (those are sealed, see `_memfd`)."""

    def __init__(self) -> None:
        self.free: list[tuple[int, mmap.mmap]] = []
        self.used: list[tuple[int, mmap.mmap]] = []

    def fill(self, array) -> int:
        size = max(array.nbytes, 1)
        fits = [entry for entry in self.free if len(entry[1]) >= size]
        if fits:
            entry = min(fits, key=lambda e: len(e[1]))
            self.free.remove(entry)
        else:
            fd = os.memfd_create("apt-tensor-pool", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
            entry = (fd, mmap.mmap(fd, size))
        if array.nbytes:
            entry[1][:array.nbytes] = memoryview(array).cast("B")
        self.used.append(entry)
        return entry[0]

    def release(self) -> None:
        """The call is over: its buffers may be reused."""
        self.free += self.used
        self.used = []

    def close(self) -> None:
        for fd, mapped in self.free + self.used:
            mapped.close()
            os.close(fd)
        self.free, self.used = [], []


def send(sock: socket.socket, message: dict, pool: BufferPool | None = None) -> None:
    buffers: list = []
    payload = json.dumps(_encode(message, buffers), allow_nan=True, separators=(",", ":")).encode()
    if len(payload) > MAX_MESSAGE:
        raise ValueError(f"message of {len(payload)} bytes is over the {MAX_MESSAGE} byte limit")
    fds = [pool.fill(array) if pool is not None else _memfd(array) for array, _ in buffers]
    try:
        header = _HEADER.pack(len(payload), len(fds))
        if fds:
            socket.send_fds(sock, [header + payload], fds)
        else:
            sock.sendall(header + payload)
    finally:
        if pool is None:
            for fd in fds:
                os.close(fd)


def _recv_some(sock: socket.socket, size: int, fds: list[int]) -> bytes:
    data, new_fds, _, _ = socket.recv_fds(sock, size, MAX_FDS)
    fds.extend(new_fds)
    if not data:
        raise ProtocolError("connection closed")
    return data


def _recv_message(sock: socket.socket, fds: list[int]) -> tuple[bytes, int]:
    """(payload, fd count). One read usually holds the whole of a small message. The two sides take
    turns, so more bytes than one message means a peer that does not follow the protocol."""
    data = _recv_some(sock, 1 << 16, fds)
    while len(data) < _HEADER.size:
        data += _recv_some(sock, _HEADER.size - len(data), fds)
    length, count = _HEADER.unpack_from(data)
    if length > MAX_MESSAGE or count > MAX_FDS:
        raise ProtocolError(f"message header out of bounds ({length} bytes, {count} fds)")
    total = _HEADER.size + length
    chunks, have = [data], len(data)
    while have < total:
        chunk = _recv_some(sock, min(total - have, 1 << 20), fds)
        chunks.append(chunk)
        have += len(chunk)
    if have > total:
        raise ProtocolError("more than one message at a time")
    return b"".join(chunks)[_HEADER.size:], count


def recv(sock: socket.socket, tensors: str = "torch") -> dict:
    """One message; tensors come back as torch tensors (host) or read-only numpy arrays (worker)."""
    fds: list[int] = []
    try:
        payload, count = _recv_message(sock, fds)
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
    if kind == "torch":  # the host: a buffer from the worker must be sealed, or the worker could change it later
        try:
            sealed = fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS == SEALS
        except OSError:
            sealed = False
        if not sealed:
            raise ProtocolError("a tensor buffer that is not sealed against writes")
    if size == 0:
        array = np.zeros(shape, dtype=np_dtype)
    else:  # a private copy-on-write mapping of a sealed buffer: no copy, and nobody can change it
        mapped = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        array = np.frombuffer(mapped, dtype=np_dtype).reshape(shape)
    if kind != "torch":
        array.flags.writeable = False  # a read-only view for the plugin
        return array
    import torch

    out = torch.from_numpy(array)
    return out.view(torch.bfloat16) if dtype == "bfloat16" else out
