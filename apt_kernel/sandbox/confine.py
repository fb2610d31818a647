"""The OS layers a sandbox worker applies to itself before any plugin code runs.

Each `apply_*` returns a `Layer`: applied, or not and why. Nothing is silently skipped: the worker
sends the list to the host, which shows it (`plugins doctor --sandbox`) and refuses to go on when a
layer in ``require`` is missing. Order matters: namespaces and capabilities need privileges that the
later layers take away; seccomp comes last because it forbids the calls the others make.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import resource
import socket
import struct
import sys
from dataclasses import asdict, dataclass


@dataclass
class Layer:
    name: str
    active: bool
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(number: int, *args) -> int:
    result = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return result


# -- rlimits ---------------------------------------------------------------------------------------
def apply_rlimits(cpu_seconds: int, memory_mb: int | None, open_files: int, file_size_mb: int) -> Layer:
    """Soft = hard (CPU: one second apart), so the plugin cannot raise them back (it has no CAP_SYS_RESOURCE either).
    Memory is RLIMIT_DATA (heap and private mappings), not RLIMIT_AS, which CUDA's huge virtual
    reservations break; GPU plugins pass memory_mb=None and rely on the host's RSS watchdog."""
    limits = {"RLIMIT_CPU": cpu_seconds, "RLIMIT_NOFILE": open_files, "RLIMIT_FSIZE": file_size_mb << 20,
              "RLIMIT_CORE": 0}
    if memory_mb is not None:
        limits["RLIMIT_DATA"] = memory_mb << 20
    for name, value in limits.items():
        # CPU: SIGXCPU at the limit (reported as such), SIGKILL a second later if the plugin ignores it
        resource.setrlimit(getattr(resource, name), (value, value + 1 if name == "RLIMIT_CPU" else value))
    memory = f"data {memory_mb} MiB" if memory_mb is not None else "memory by RSS watchdog only"
    return Layer("rlimits", True, f"cpu {cpu_seconds} s, {memory}, {open_files} files, file size "
                                  f"{file_size_mb} MiB, no core dumps (process count: seccomp denies fork)")


# -- privileges ------------------------------------------------------------------------------------
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 38, 24


def apply_no_new_privs() -> Layer:
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return Layer("no_new_privs", False, os.strerror(ctypes.get_errno()))
    return Layer("no_new_privs", True, "set: exec can never gain privileges")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def apply_drop_capabilities() -> Layer:
    """A worker started by root would otherwise keep every capability (raise rlimits, ptrace, ...)."""
    last_cap = int(open("/proc/sys/kernel/cap_last_cap").read()) if os.path.exists(
        "/proc/sys/kernel/cap_last_cap") else 40
    for cap in range(last_cap + 1):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # fails without CAP_SETPCAP: then there is nothing to drop
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        return Layer("capabilities", False, f"capset: {os.strerror(ctypes.get_errno())}")
    return Layer("capabilities", True, "all dropped (effective, permitted, inheritable, bounding set)")


# -- namespaces ------------------------------------------------------------------------------------
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000


def apply_namespaces(network: bool) -> Layer:
    """A fresh network namespace has only a loopback interface, down: nothing to connect to, not even
    over loopback or to an abstract AF_UNIX socket of the host (those names belong to a namespace). The
    report is what the worker finds in itself afterwards, not what it asked for: seccomp already refuses
    inet sockets, so nothing else would show a namespace that was never entered."""
    if network:
        return Layer("namespaces", False, "network = true: the host's network namespace is kept")
    uid, gid = os.getuid(), os.getgid()
    host = _host_network_namespace()
    if _libc.unshare(CLONE_NEWNET) == 0:
        return _verified_network("network namespace", host)
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:  # unprivileged: a user namespace makes it possible
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            try:
                with open(f"/proc/self/{name}", "w") as fh:
                    fh.write(text)
            except OSError:
                pass
        return _verified_network("user + network namespace", host)
    return Layer("namespaces", False, f"unshare: {os.strerror(ctypes.get_errno())} (user namespaces disabled?)")


def _host_network_namespace() -> str:
    try:
        return os.readlink(f"/proc/{os.getppid()}/ns/net")  # the host started this worker
    except OSError:
        return os.readlink("/proc/self/ns/net")  # not yet unshared: still the host's


def _verified_network(kind: str, host: str) -> Layer:
    try:
        own = os.readlink("/proc/self/ns/net")
        with open("/proc/self/net/dev") as fh:  # the interfaces of the namespace this process is in
            names = [line.split(":")[0].strip() for line in fh.readlines()[2:]]
        up = [name for name in names if _interface_up(name)]  # a fresh namespace's (lo, fallback tunnels) are down
    except OSError as exc:
        return Layer("namespaces", False, f"unshare returned 0 but the namespace could not be checked: {exc}")
    if own == host:
        return Layer("namespaces", False, f"unshare returned 0 but the worker is still in the host's network "
                                          f"namespace ({own})")
    if [name for name in up if name != "lo"]:
        return Layer("namespaces", False, f"own network namespace {own}, but with interfaces up: {', '.join(up)}")
    return Layer("namespaces", True, f"{kind} verified: {own}, not the host's {host}; interfaces "
                                     f"{', '.join(names) or 'none'}, {'lo up' if up else 'all down'}")


SIOCGIFFLAGS, IFF_UP = 0x8913, 1


def _interface_up(name: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:  # any socket asks the namespace it is in
        request = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, struct.pack("16sH22x", name.encode(), 0))
    return bool(struct.unpack("16sH22x", request)[1] & IFF_UP)


# -- Landlock --------------------------------------------------------------------------------------
# No maintained Python binding exists on the package index, so this is the three syscalls of
# Documentation/userspace-api/landlock.rst by hand.
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH = 1, 1
FS = {name: 1 << bit for bit, name in enumerate((
    "execute", "write_file", "read_file", "read_dir", "remove_dir", "remove_file", "make_char", "make_dir",
    "make_reg", "make_sock", "make_fifo", "make_block", "make_sym", "refer", "truncate", "ioctl_dev"))}
READ = FS["execute"] | FS["read_file"] | FS["read_dir"]
FILE_ONLY = FS["execute"] | FS["read_file"] | FS["write_file"] | FS["truncate"] | FS["ioctl_dev"]


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    try:
        return _syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                        ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    except OSError:
        return 0


def _handled(abi: int) -> int:
    handled = sum(FS.values())
    if abi < 2:
        handled &= ~FS["refer"]
    if abi < 3:
        handled &= ~FS["truncate"]
    if abi < 5:
        handled &= ~FS["ioctl_dev"]
    return handled


def apply_landlock(read_paths: list[str], write_paths: list[str]) -> Layer:
    """Only ``read_paths`` can be read and only ``write_paths`` read and written; everything else on
    the filesystem is invisible (EACCES), even to root."""
    abi = landlock_abi()
    if abi <= 0:
        return Layer("landlock", False,
                     "not supported by this kernel (needs Linux >= 5.13 with landlock in the LSM list)")
    handled = _handled(abi)
    attr = _RulesetAttr(handled, 0)
    ruleset = _syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(_RulesetAttr)),
                       ctypes.c_uint32(0))
    try:
        granted = []
        for paths, access in ((read_paths, READ), (write_paths, handled)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue  # a path that does not exist grants nothing
                try:
                    rights = access & FILE_ONLY if not os.path.isdir(path) else access
                    rule = _PathBeneath(rights & handled, fd)
                    _syscall(SYS_LANDLOCK_ADD_RULE, ruleset, ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                             ctypes.byref(rule), ctypes.c_uint32(0))
                    granted.append(path)
                finally:
                    os.close(fd)
        _syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    writable = ", ".join(p for p in write_paths if p in granted) or "nothing"
    return Layer("landlock", True, f"ABI {abi}: read-only {len(granted)} paths (Python, its libraries, the plugin), "
                                   f"read-write {writable}; the rest of the filesystem is invisible")


# -- seccomp ---------------------------------------------------------------------------------------
DENIED_SYSCALLS = (
    "fork", "vfork", "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2",
    "pivot_root", "chroot", "unshare", "setns", "bpf", "perf_event_open", "keyctl", "add_key", "request_key",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "iopl", "ioperm", "reboot",
    "swapon", "swapoff", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "pidfd_open",
    "pidfd_send_signal", "pidfd_getfd", "open_by_handle_at", "name_to_handle_at", "setrlimit", "prlimit64",
    "personality", "acct", "settimeofday", "clock_settime", "sethostname", "setdomainname", "quotactl",
)
CLONE_THREAD = 0x00010000
AF_UNIX = 1


def seccomp_available() -> tuple[bool, str]:
    try:
        import pyseccomp  # noqa: F401 - libseccomp via ctypes; finds the library with ldconfig: before Landlock
    except (ImportError, OSError, RuntimeError) as exc:
        return False, f"libseccomp not available: {exc}"
    return True, "libseccomp"


def apply_seccomp(network: bool = False) -> Layer:
    """Default allow, with the dangerous calls denied: no new processes (threads are fine), no exec,
    no sockets but AF_UNIX, no ptrace or other-process memory, no signals to other processes, no
    namespace, module, mount or io_uring calls (io_uring would bypass the socket rule)."""
    ok, why = seccomp_available()
    if not ok:
        return Layer("seccomp", False, why)
    import pyseccomp as sc

    deny = sc.ERRNO(errno.EPERM)
    filt = sc.SyscallFilter(sc.ALLOW)
    denied = []
    for name in DENIED_SYSCALLS:
        try:
            filt.add_rule(deny, name)
            denied.append(name)
        except (ValueError, RuntimeError, OSError):
            pass  # not a syscall on this architecture
    filt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # glibc then falls back to clone(), checked below
    filt.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))  # a process, not a thread
    if not network:
        filt.add_rule(sc.ERRNO(errno.EACCES), "socket", sc.Arg(0, sc.NE, AF_UNIX))
    pid = os.getpid()  # signals only to itself: never to the host or anything else of this user
    filt.add_rule(deny, "kill", sc.Arg(0, sc.NE, pid))
    filt.add_rule(deny, "tgkill", sc.Arg(0, sc.NE, pid))
    filt.add_rule(deny, "tkill")
    filt.load()
    sockets = "all sockets (network = true)" if network else "sockets AF_UNIX only"
    return Layer("seccomp", True, f"{len(denied) + 6} calls denied or narrowed: no fork/exec (threads allowed), "
                                  f"{sockets}, no ptrace, signals to itself only")


def python_read_paths() -> list[str]:
    """What the interpreter needs to read: its prefix, its import path, shared libraries, a few files."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    folders = [p for p in sys.path if p and os.path.isdir(p)]
    paths.update(folders)
    # Landlock checks the path a file resolves to: a package linked into site-packages from elsewhere (a
    # symlinked environment, as Nix or a shared venv makes) is readable only where it really lives
    for folder in folders:
        with os.scandir(folder) as entries:
            paths.update(os.path.realpath(entry.path) for entry in entries if entry.is_symlink())
    paths.update(p for p in sys.path if p and os.path.isfile(p))  # zip archives on the import path
    paths.update(("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/etc/ld.so.cache",
                  "/etc/localtime", "/dev/urandom", "/proc/self/maps"))
    return sorted(paths)
