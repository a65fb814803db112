"""The sandbox's child side: confine this process, then run the study's code once.

Run by :mod:`fedcare.governance.sandbox` as ``python -I -B _sandbox_child.py CONFIG_JSON``
(never imported): it uses the standard library and numpy only, so that it does not depend on
fedcare being importable in the child. Every step that confines the process happens here,
before the untrusted module is even read; what held is written to the report pipe, which is
then closed. If the parent asked for an isolation layer that cannot be set up, the child
exits with :data:`EXIT_UNAVAILABLE` before running anything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import resource
import sys
import traceback

EXIT_ERROR = 3          # the study's code raised
EXIT_MEMORY = 4         # it ran out of memory (MemoryError under RLIMIT_AS)
EXIT_BAD_RESULT = 5     # it returned something that is not {name: array}, or exited
EXIT_UNAVAILABLE = 6    # a required isolation layer could not be set up
EXIT_SETUP = 7          # the sandbox itself failed before running the code

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_NOSUID = 2
MS_NODEV = 4
MS_RDONLY = 1
MS_REMOUNT = 32
PR_SET_NO_NEW_PRIVS = 38

# Landlock (linux/landlock.h); the syscall numbers are the same on every architecture.
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
_FS = {name: 1 << i for i, name in enumerate((
    "EXECUTE", "WRITE_FILE", "READ_FILE", "READ_DIR", "REMOVE_DIR", "REMOVE_FILE",
    "MAKE_CHAR", "MAKE_DIR", "MAKE_REG", "MAKE_SOCK", "MAKE_FIFO", "MAKE_BLOCK", "MAKE_SYM",
    "REFER", "TRUNCATE", "IOCTL_DEV"))}
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1,
              5: (1 << 16) - 1}
_FILE_RIGHTS = _FS["EXECUTE"] | _FS["WRITE_FILE"] | _FS["READ_FILE"] | _FS["TRUNCATE"] | \
    _FS["IOCTL_DEV"]
_READ = _FS["EXECUTE"] | _FS["READ_FILE"] | _FS["READ_DIR"]
_WRITE = _READ | _FS["WRITE_FILE"] | _FS["REMOVE_DIR"] | _FS["REMOVE_FILE"] | \
    _FS["MAKE_DIR"] | _FS["MAKE_REG"] | _FS["REFER"] | _FS["TRUNCATE"]
_NET_ALL = 0b11            # BIND_TCP | CONNECT_TCP, handled with no rule: all refused
_SCOPE_ALL = 0b11          # abstract unix sockets and signals outside the domain

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _errno_call(fn: object, *args: object) -> int:
    result = fn(*args)  # type: ignore[operator]
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def _unshare(flags: int) -> None:
    if hasattr(os, "unshare"):  # Python 3.12+
        os.unshare(flags)
    else:
        _errno_call(_libc.unshare, ctypes.c_int(flags))


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    def enc(text: str | None) -> bytes | None:
        return None if text is None else text.encode()

    _errno_call(_libc.mount, enc(source), target.encode(), enc(fstype),
                ctypes.c_ulong(flags), enc(data))


def _outermost(paths: list[str]) -> list[str]:
    """``paths`` without those inside another one (a bind of the outer one shows them)."""
    kept: list[str] = []
    for path in sorted(set(paths), key=lambda p: (p.count("/"), p)):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def _new_root(root: str, read: list[str], devices: list[str], workdir: str) -> None:
    """Build a root holding only ``read`` (read-only binds, at their own paths, so that the
    interpreter's sys.path still holds), the ``devices`` and the read-write ``workdir``, and
    chroot into it. Nothing else of the machine - the node's folders, other users' files,
    unix sockets in /run or /tmp - exists for the job. Our mount namespace only."""
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for path in _outermost([p for p in read if os.path.lexists(p)]):
        target = root + path
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        if os.path.islink(path):  # /lib -> usr/lib: the same link inside
            os.symlink(os.readlink(path), target)
            continue
        if os.path.isdir(path):
            os.makedirs(target, 0o755, exist_ok=True)
        else:
            open(target, "wb").close()
        _mount(path, target, None, MS_BIND | MS_REC)
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for path in devices:
        target = root + path
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        open(target, "wb").close()
        _mount(path, target, None, MS_BIND)
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_NOSUID)
    os.makedirs(root + workdir, 0o755, exist_ok=True)
    _mount(workdir, root + workdir, None, MS_BIND)
    _mount(None, root + workdir, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV)
    _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
           "mode=0755,size=1m")
    os.chdir(root)
    os.chroot(".")
    os.chdir(workdir)


def _landlock(read: list[str], write: list[str], devices: list[str]) -> int:
    """Restrict this process (and all it starts) to reading ``read`` and writing ``write``,
    with no TCP and, from ABI 6, no signals or abstract sockets outside; returns the ABI."""
    syscall = _libc.syscall
    syscall.restype = ctypes.c_long
    abi = syscall(ctypes.c_long(SYS_CREATE_RULESET), None, ctypes.c_size_t(0),
                  ctypes.c_uint32(1))
    if abi < 1:
        raise OSError(ctypes.get_errno(), "Landlock is not available in this kernel")
    handled = _FS_BY_ABI.get(abi, _FS_BY_ABI[5])
    attr = (ctypes.c_uint64 * 3)(handled, _NET_ALL if abi >= 4 else 0,
                                 _SCOPE_ALL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = syscall(ctypes.c_long(SYS_CREATE_RULESET), ctypes.byref(attr),
                      ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    def allow(path: str, access: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return  # a path that does not exist needs no rule
        try:
            if not os.path.isdir(path):
                access &= _FILE_RIGHTS
            rule = PathBeneath(access & handled, fd)
            if syscall(ctypes.c_long(SYS_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(1),
                       ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
                raise OSError(ctypes.get_errno(), f"landlock_add_rule {path} failed")
        finally:
            os.close(fd)

    for path in read:
        allow(path, _READ)
    for path in devices:
        allow(path, _FS["READ_FILE"] | _FS["WRITE_FILE"])
    for path in write:
        allow(path, _WRITE)
    _errno_call(_libc.prctl, ctypes.c_int(PR_SET_NO_NEW_PRIVS), ctypes.c_ulong(1),
                ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    if syscall(ctypes.c_long(SYS_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    os.close(ruleset)
    return int(abi)


def _confine(cfg: dict[str, object], report: dict[str, str]) -> list[str]:
    """Every isolation layer this process can set up, in order; returns the layers that
    were required and could not be set up."""
    missing: list[str] = []
    workdir = str(cfg["workdir"])
    uid = cfg.get("uid")
    privileged = uid is not None
    try:
        _unshare(CLONE_NEWNET if privileged else CLONE_NEWUSER | CLONE_NEWNET)
        report["network"] = "new network namespace (no interface up)"
    except OSError as exc:
        report["network"] = f"none ({exc.strerror})"
    if privileged:
        try:
            _unshare(CLONE_NEWNS)
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
            _new_root(str(cfg["stage"]), list(cfg["read"]), list(cfg["devices"]),  # type: ignore[call-overload]
                      workdir)
            report["mounts"] = ("private mount namespace, chroot: only the interpreter, the "
                                "system libraries and the job folder exist")
        except OSError as exc:
            report["mounts"] = f"unchanged ({exc.strerror})"
            missing.append("mounts")
    try:
        abi = _landlock(list(cfg["read"]), [workdir], list(cfg["devices"]))  # type: ignore[call-overload]
        report["filesystem"] = f"landlock ABI {abi}: read-only interpreter, read-write workdir"
        if abi >= 4:
            report["network"] += "; landlock: no TCP bind/connect"
        if abi >= 6:
            report["signals"] = "landlock: no signals to processes outside the sandbox"
    except OSError as exc:
        report["filesystem"] = f"none ({exc.strerror})"
        missing.append("filesystem")
    if privileged:
        try:
            os.setgroups([])
            os.setresgid(int(uid), int(uid), int(uid))  # type: ignore[call-overload]
            os.setresuid(int(uid), int(uid), int(uid))  # type: ignore[call-overload]
            report["identity"] = f"uid {uid}, no capabilities, no supplementary groups"
        except OSError as exc:
            report["identity"] = f"unchanged ({exc.strerror})"
            missing.append("identity")
    else:
        report["identity"] = "the node's own user (not root: cannot change uid)"
    if report["network"].startswith("none") and "landlock: no TCP" not in report["network"]:
        missing.append("network")
    limits = dict(cfg["limits"])  # type: ignore[call-overload]
    for name, value in (("RLIMIT_CPU", limits["cpu_seconds"]),
                        ("RLIMIT_AS", limits["memory_bytes"]),
                        ("RLIMIT_NPROC", limits["processes"]),
                        ("RLIMIT_FSIZE", limits["output_bytes"]),
                        ("RLIMIT_NOFILE", limits["open_files"]), ("RLIMIT_CORE", 0)):
        soft = int(value)
        hard = soft + 1 if name == "RLIMIT_CPU" else soft
        resource.setrlimit(getattr(resource, name), (soft, hard))
    report["processes"] = ("RLIMIT_NPROC for the sandbox's own uid" if privileged else
                           "RLIMIT_NPROC counts every process of the node's user (weaker)")
    return [m for m in missing if m in set(cfg["require"])]  # type: ignore[call-overload]


def _run(cfg: dict[str, object]) -> int:
    import importlib.util
    import signal

    # Python ignores SIGXFSZ (a write past RLIMIT_FSIZE fails with EFBIG instead): restore
    # the kernel's default, so that a job that writes too much dies of it.
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)

    import numpy as np

    workdir = str(cfg["workdir"])
    inputs = {}
    for name in sorted(os.listdir(os.path.join(workdir, "in"))):
        if name.endswith(".npy"):
            inputs[name[:-4]] = np.load(os.path.join(workdir, "in", name), allow_pickle=False)
    spec = importlib.util.spec_from_file_location("fedcare_study_code",
                                                  os.path.join(workdir, "code", "model.py"))
    if spec is None or spec.loader is None:
        print("sandbox: cannot load the study's code", file=sys.stderr)
        return EXIT_SETUP
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        result = getattr(module, str(cfg["entry"]))(inputs)
    except MemoryError:
        print("sandbox: the study's code ran out of memory", file=sys.stderr)
        return EXIT_MEMORY
    except SystemExit as exc:
        print(f"sandbox: the study's code exited ({exc.code!r}) instead of returning",
              file=sys.stderr)
        return EXIT_BAD_RESULT
    except BaseException:  # noqa: BLE001 - the study's own error: reported, not raised
        traceback.print_exc(limit=20)
        return EXIT_ERROR
    if not isinstance(result, dict) or not all(isinstance(k, str) for k in result):
        print(f"sandbox: {cfg['entry']}() must return {{name: array}}, not "
              f"{type(result).__name__}", file=sys.stderr)
        return EXIT_BAD_RESULT
    try:
        for name, value in result.items():
            array = np.asarray(value)
            with open(os.path.join(workdir, "out", f"{name}.npy"), "xb") as fh:
                np.save(fh, array, allow_pickle=False)
    except MemoryError:
        return EXIT_MEMORY
    except (OSError, ValueError, TypeError) as exc:
        print(f"sandbox: cannot write output {name!r}: {exc}", file=sys.stderr)
        return EXIT_BAD_RESULT
    return 0


def main() -> int:
    cfg = json.loads(sys.argv[1])
    report_fd = int(cfg["report_fd"])
    report: dict[str, str] = {}
    try:
        missing = _confine(cfg, report)
    except Exception as exc:  # noqa: BLE001 - the sandbox's own failure: run nothing
        report["error"] = f"{type(exc).__name__}: {exc}"
        missing = ["setup"]
    report["missing"] = ",".join(missing)
    os.write(report_fd, json.dumps(report).encode())
    os.close(report_fd)
    if missing:
        return EXIT_UNAVAILABLE if "setup" not in missing else EXIT_SETUP
    return _run(cfg)


if __name__ == "__main__":
    sys.exit(main())
