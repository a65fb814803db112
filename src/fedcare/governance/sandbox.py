"""Run a study's own model code, which the site does not trust, in a confined child process.

Why: a study that brings its own model file asks the site to execute a stranger's code next
to its patients' data and its private key. The site runs that code only here: in a separate
process that gets nothing but the study's prepared arrays and hands back nothing but arrays.

Threat model. The code is hostile and knows fedcare: it tries to read the node's key,
certificates, privacy ledger or other data on the machine; to reach the network (the hub, the
internet, a loopback service); to exhaust CPU, memory, processes or disk; to hang; to crash
or kill the node; to break out through ``ctypes`` or a namespace trick. The kernel is trusted.

What holds, in order (each layer is set up in the child before the study's file is read;
:attr:`SandboxResult.isolation` says what held on this machine):

1. Input and output are files in a fresh job folder: ``in/NAME.npy`` (written by the parent,
   ``allow_pickle=False``), ``out/NAME.npy`` (read back by the parent with
   ``allow_pickle=False`` from regular, unlinked, non-symlink files of bounded number and
   size: a hostile symlink to the key is refused, not followed). Nothing else is passed:
   the environment is scrubbed (``HOME`` and ``TMPDIR`` are the job folder, one BLAS thread),
   inherited file descriptors are closed, ``python -I`` ignores ``PYTHON*`` variables and the
   user's site folder, and the working directory is the empty job folder.
2. Network: a new network namespace (no interface is up, not even loopback), so no socket
   reaches the hub, the internet or a service on the node's loopback. With Landlock ABI >= 4
   TCP bind/connect are refused as well, even where no namespace could be made.
3. Files: Landlock (Linux >= 5.13) allows reading only the interpreter's own folders and the
   system libraries, and writing only the job folder; every other path - the node's kit,
   state folder, ledger, data - is refused whatever its mode bits.
4. Identity and view (when the node runs as root, as in fedcare's CI and containers): a
   private mount namespace whose root (chroot) holds only read-only binds of the
   interpreter's folders and the system libraries, four devices and the job folder - the
   node's folders, other users' files and every unix socket (a database's in /run or /tmp,
   which neither Landlock nor a network namespace stops) do not exist there; then a fresh
   unprivileged uid with no capabilities and no groups, so RLIMIT_NPROC counts this job's
   processes only and mode-0600 files stay unreadable even without Landlock. With Landlock
   ABI >= 6 the code cannot signal processes outside the sandbox.
5. Limits (per process; the job's processes are at most ``processes``): ``RLIMIT_CPU``
   (SIGXCPU, then SIGKILL a second later), ``RLIMIT_AS`` (memory: a 50 GB allocation fails
   with MemoryError), ``RLIMIT_NPROC`` (threads count too), ``RLIMIT_
   FSIZE`` (SIGXFSZ past it, stdout and stderr included), ``RLIMIT_NOFILE``, no core dumps;
   the parent kills the job at the wall-clock limit or when its folder outgrows the output
   limit, and (as root) then kills every process of the job's uid - a child that left the
   process group or session is killed too.

Weaker mode: without root the uid cannot change and no new root is built; the child tries
a user+network namespace and Landlock (files outside the job folder are still unreadable,
but a world-writable unix socket is reachable), RLIMIT_NPROC then counts every process of the
node's user, and a process that left the job's session survives it. Without Landlock, files
are protected by mode bits only. A run in which a required layer (network,
filesystem, identity, mounts) could not be set up is refused - status ``unavailable``, the
code never runs - unless the caller passes ``allow_weaker=True``, and the result says which.

Not covered: kernel exploits (there is no seccomp filter: the code can make any system call
the layers above leave open, e.g. create a user namespace, though Landlock still holds
there); timing or cache side channels; what the code does with the input arrays within its
own outputs (a study can encode its inputs in the returned arrays - the site's output checks
and release rules (:mod:`fedcare.governance.site_policy`) are the place for that); RLIMIT_AS
limits address space, not resident memory, and a wall-clock-polled folder size can overshoot
by what the code writes in one poll interval (at most ``output_bytes`` per file).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.core.errors import FedcareError

_CHILD = Path(__file__).with_name("_sandbox_child.py")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_EXIT_ERROR, _EXIT_MEMORY, _EXIT_BAD_RESULT, _EXIT_UNAVAILABLE, _EXIT_SETUP = 3, 4, 5, 6, 7
#: The uids a job runs as when the node is root: fresh per job, owning no file.
_UID_BASE, _UID_SPAN = 2_000_000_000, 100_000_000
_POLL = 0.02
MAX_ARRAYS = 64
_STDERR_TAIL = 4096


class SandboxError(FedcareError):
    """The sandbox was called wrongly (bad input names or arrays, bad limits)."""


class Status(enum.StrEnum):
    """How a job ended. Only ``ok`` carries outputs."""

    OK = "ok"
    ERROR = "error"                  # the code raised (traceback in stderr)
    BAD_RESULT = "bad_result"        # it returned no {name: array}, or called exit()
    BAD_OUTPUT = "bad_output"        # out/ holds something that is not a plain array file
    TIMEOUT = "timeout"              # killed at the wall-clock limit
    CPU_LIMIT = "cpu_limit"          # killed at the CPU-time limit
    MEMORY_LIMIT = "memory_limit"    # ran out of address space
    OUTPUT_LIMIT = "output_limit"    # wrote more than allowed (files, stdout or stderr)
    KILLED = "killed"                # died of another signal
    UNAVAILABLE = "unavailable"      # a required isolation layer is missing: nothing ran


@dataclass(frozen=True)
class Limits:
    """What one job may use. The defaults suit a small tabular model; torch needs a larger
    ``memory_bytes`` (address space, not resident memory)."""

    cpu_seconds: int = 300
    wall_seconds: float = 600.0
    memory_bytes: int = 4 << 30
    #: Processes and threads of the job together (the child itself is one).
    processes: int = 8
    #: Largest file the job may write (stdout and stderr included), and its folder's total.
    output_bytes: int = 256 << 20
    open_files: int = 64

    def __post_init__(self) -> None:
        checks = [("cpu_seconds", 1, 86_400), ("memory_bytes", 64 << 20, 1 << 40),
                  ("processes", 1, 4096), ("output_bytes", 1 << 10, 1 << 40),
                  ("open_files", 16, 65_536)]
        for name, low, high in checks:
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                raise SandboxError(f"Limits.{name} must be an integer in {low}..{high}, "
                                   f"got {value!r}")
        if not isinstance(self.wall_seconds, (int, float)) or not \
                0 < self.wall_seconds <= 86_400:
            raise SandboxError(f"Limits.wall_seconds must be in (0, 86400], got "
                               f"{self.wall_seconds!r}")


@dataclass(frozen=True)
class SandboxResult:
    """What became of one job; never raised, always returned."""

    status: Status
    reason: str
    outputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    exit_code: int | None = None
    #: The signal that ended the child, if one did.
    signal: int | None = None
    #: The last few KiB of the child's stderr (its traceback), for the site's log.
    stderr: str = ""
    #: Each isolation layer and what held for this job (network, filesystem, identity, ...).
    isolation: Mapping[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


def _privileged() -> bool:
    """Whether the node can set up the root-only layers (its own uid, mount namespace)."""
    return os.geteuid() == 0


@functools.cache
def _interpreter_paths() -> tuple[str, ...]:
    """The folders the child's interpreter reads (``python -I``'s sys.path and prefixes)."""
    probe = subprocess.run([sys.executable, "-I", "-c",
                            "import sys, json; print(json.dumps([sys.prefix, sys.base_prefix,"
                            " sys.exec_prefix, sys.base_exec_prefix, *sys.path]))"],
                           capture_output=True, text=True, timeout=60, check=True,
                           env={"PATH": "/usr/bin:/bin"})
    paths = {os.path.realpath(p) for p in json.loads(probe.stdout) if p}
    paths |= {os.path.realpath(os.path.dirname(sys.executable)),
              os.path.realpath(np.__file__).rsplit(os.sep + "numpy" + os.sep, 1)[0]}
    return tuple(sorted(p for p in paths if os.path.exists(p)))


_SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/etc/ld.so.cache",
                "/etc/localtime", "/sys/devices/system/cpu")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


def _check_inputs(inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(inputs, Mapping) or len(inputs) > MAX_ARRAYS:
        raise SandboxError(f"inputs must be a mapping of at most {MAX_ARRAYS} arrays")
    out = {}
    for name, value in inputs.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise SandboxError(f"input name {name!r} must be a Python identifier of at most "
                               "64 characters")
        array = np.asarray(value)
        if array.dtype.hasobject or array.dtype.kind not in "biufc":
            raise SandboxError(f"input {name!r} must be a numeric or boolean array, not "
                               f"{array.dtype}")
        out[name] = array
    return out


def _folder_size(root: Path, limit: int) -> int:
    """The bytes under ``root``, counting each entry at least a block; stops past ``limit``."""
    total = 0
    stack = [str(root)]
    while stack and total <= limit:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    total += max(st.st_size, 4096)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return total


def _kill_all(pid: int, uid: int | None) -> None:
    """Kill the job: its process group, and (as root) every process of its uid, until none
    is left (a fork bomb keeps forking while being killed)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if uid is None:
        return
    for _ in range(100):
        if not _processes_of(uid):
            return
        kill = shutil.which("kill", path="/usr/bin:/bin") or "/bin/kill"
        subprocess.run([kill, "-KILL", "-1"], user=uid, group=uid, extra_groups=[],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env={}, cwd="/", check=False, timeout=10)


def _processes_of(uid: int) -> list[int]:
    """The live processes of ``uid`` (zombies, already dead, are left to their parent)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if os.stat(f"/proc/{entry}").st_uid != uid:
                    continue
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    state = fh.read().rsplit(b")", 1)[1].split()[0]
                if state not in (b"Z", b"X"):
                    found.append(int(entry))
    return found


def _read_outputs(out: Path, limit: int) -> tuple[dict[str, np.ndarray], str | None]:
    """The arrays the job left in ``out``, or why they are refused."""
    arrays: dict[str, np.ndarray] = {}
    total = 0
    with os.scandir(out) as entries:
        names = sorted(e.name for e in entries)
    if len(names) > MAX_ARRAYS:
        return {}, f"{len(names)} output files (at most {MAX_ARRAYS})"
    for name in names:
        if not name.endswith(".npy") or not _NAME.fullmatch(name[:-4]):
            return {}, f"output {name!r} is not NAME.npy"
        try:
            fd = os.open(out / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            return {}, f"output {name!r} cannot be opened safely ({exc.strerror}: a link?)"
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                return {}, f"output {name!r} is not a plain file of its own"
            total += st.st_size
            if total > limit:
                return {}, f"outputs larger than {limit} bytes"
            try:
                _check_header(fh, st.st_size)
                array = np.load(fh, allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                return {}, f"output {name!r} is not an array file: {exc}"
            if not isinstance(array, np.ndarray) or array.dtype.hasobject:
                return {}, f"output {name!r} is not a plain array"
            arrays[name[:-4]] = np.array(array, copy=True)
    return arrays, None


def _check_header(fh: Any, size: int) -> None:
    """Refuse an array file whose header promises more (or less) data than the file holds,
    before numpy allocates what the header says (a tiny file claiming 8 TB)."""
    from numpy.lib import format as npy

    version = npy.read_magic(fh)
    if version == (1, 0):
        shape, _fortran, dtype = npy.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _fortran, dtype = npy.read_array_header_2_0(fh)
    else:
        raise ValueError(f".npy version {version} is not accepted")
    if dtype.hasobject:
        raise ValueError("object arrays are refused")
    count = 1
    for n in shape:
        count *= int(n)
    if count * dtype.itemsize != size - fh.tell():
        raise ValueError(f"header says {count * dtype.itemsize} bytes of data, the file "
                         f"holds {size - fh.tell()}")
    fh.seek(0)


def _tail(path: Path) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        fh.seek(max(0, os.fstat(fh.fileno()).st_size - _STDERR_TAIL))
        return fh.read().decode("utf-8", errors="replace")
    return ""


def run_untrusted(code: str | Path, inputs: Mapping[str, Any], *, limits: Limits | None = None,
                  entry: str = "run", allow_weaker: bool = False,
                  folder: Path | None = None) -> SandboxResult:
    """Run ``entry(inputs) -> {name: array}`` of the study's module ``code`` (its source, or
    the path of its file) in a confined child process (module docstring) and return what
    became of it. Hostile code fails as a :class:`SandboxResult` (never an exception, never
    harm to this process); only a wrong call raises :class:`SandboxError`.

    ``folder``: where the job folder is made (default: the system's temp folder), and
    removed afterwards. ``allow_weaker``: run even if a required isolation layer cannot be
    set up on this machine (the result's ``isolation`` says which did not)."""
    limits = limits if limits is not None else Limits()
    if not isinstance(limits, Limits):
        raise SandboxError("limits must be a Limits")
    if not isinstance(entry, str) or not _NAME.fullmatch(entry):
        raise SandboxError(f"entry {entry!r} must be a function name")
    arrays = _check_inputs(inputs)
    source = Path(code).read_bytes() if isinstance(code, Path) else str(code).encode()
    job = Path(tempfile.mkdtemp(prefix="fedcare-sandbox-", dir=folder))
    try:
        return _run_job(job, source, arrays, limits, entry, allow_weaker)
    finally:
        shutil.rmtree(job, ignore_errors=True)


def _prepare(job: Path, source: bytes, arrays: Mapping[str, np.ndarray],
             uid: int | None) -> Path:
    """The job folder: ``work/`` (the child's: in, out, code, tmp) and root-only ``logs/``
    and ``stage/``."""
    os.chmod(job, 0o711)  # the child's uid may pass through, not list it
    work = job / "work"
    for sub in ("", "in", "out", "code", "tmp"):
        (work / sub).mkdir(mode=0o700)
    for name, array in arrays.items():
        np.save(work / "in" / f"{name}.npy", array, allow_pickle=False)
    (work / "code" / "model.py").write_bytes(source)
    (job / "logs").mkdir(mode=0o700)
    (job / "stage").mkdir(mode=0o700)
    if uid is not None:
        for path in [work, *work.rglob("*")]:
            os.chown(path, uid, uid, follow_symlinks=False)
    return work


def _run_job(job: Path, source: bytes, arrays: Mapping[str, np.ndarray], limits: Limits,
             entry: str, allow_weaker: bool) -> SandboxResult:
    privileged = _privileged()
    uid = _UID_BASE + secrets.randbelow(_UID_SPAN) if privileged else None
    work = _prepare(job, source, arrays, uid)
    try:
        paths = _interpreter_paths()
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return SandboxResult(Status.UNAVAILABLE, "cannot tell which folders the sandboxed "
                             f"interpreter needs ({exc}); nothing ran")
    require = [] if allow_weaker else (["network", "filesystem", "identity", "mounts"]
                                       if privileged else ["network", "filesystem"])
    if not privileged and not allow_weaker:
        return SandboxResult(Status.UNAVAILABLE, "this node does not run as root, so the "
                             "job cannot get its own uid (RLIMIT_NPROC would count the "
                             "node's own processes); pass allow_weaker=True to run with "
                             "namespaces and Landlock only",
                             isolation={"identity": "the node's own user"})
    report_r, report_w = os.pipe()
    cfg = {"workdir": str(work), "uid": uid, "stage": str(job / "stage"),
           "read": [*paths, *_SYSTEM_READ], "devices": list(_DEVICES), "require": require,
           "entry": entry, "report_fd": report_w,
           "limits": {"cpu_seconds": limits.cpu_seconds, "memory_bytes": limits.memory_bytes,
                      "processes": limits.processes, "output_bytes": limits.output_bytes,
                      "open_files": limits.open_files}}
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work / "tmp"),
           "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}
    start = time.monotonic()
    with open(job / "logs" / "stdout", "wb") as out, open(job / "logs" / "stderr", "wb") as err:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", str(_CHILD), json.dumps(cfg)], cwd=work, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, close_fds=True,
                pass_fds=(report_w,), start_new_session=True)
        except OSError as exc:
            os.close(report_r)
            return SandboxResult(Status.UNAVAILABLE, f"cannot start the sandbox: {exc}")
        finally:
            os.close(report_w)
        killed_for, status, rusage = _wait(proc, job, work, limits, uid)
    seconds = time.monotonic() - start
    with os.fdopen(report_r, "rb") as fh:
        os.set_blocking(fh.fileno(), False)
        try:
            isolation = json.loads(fh.read(65536) or b"{}")
        except (ValueError, TypeError, BlockingIOError):
            isolation = {}
    cpu = rusage.ru_utime + rusage.ru_stime if rusage is not None else 0.0
    result = _classify(proc.returncode, killed_for, status, limits, cpu)
    logs = [(job / "logs" / name).stat().st_size for name in ("stdout", "stderr")]
    if result[0] is not Status.OUTPUT_LIMIT and max(logs) >= limits.output_bytes:
        result = (Status.OUTPUT_LIMIT, f"wrote {limits.output_bytes} bytes or more to "
                  "stdout or stderr: stopped")
    outputs: dict[str, np.ndarray] = {}
    if result[0] is Status.OK:
        outputs, problem = _read_outputs(work / "out", limits.output_bytes)
        if problem is not None:
            result = (Status.BAD_OUTPUT, problem)
    if result[0] is Status.UNAVAILABLE and isolation.get("missing"):
        result = (Status.UNAVAILABLE, "required isolation could not be set up here: "
                  f"{isolation['missing']} (see isolation); nothing ran")
    code = proc.returncode
    return SandboxResult(result[0], result[1], outputs,
                         exit_code=code if code is not None and code >= 0 else None,
                         signal=-code if code is not None and code < 0 else None,
                         stderr=_tail(job / "logs" / "stderr"), isolation=isolation,
                         seconds=seconds, cpu_seconds=cpu)


def _wait(proc: subprocess.Popen[bytes], job: Path, work: Path, limits: Limits,
          uid: int | None) -> tuple[Status | None, int | None, Any]:
    """Wait for the child, killing it at the wall-clock limit or when its folder grows past
    the output limit; then kill whatever of the job is left. Returns (why we killed it,
    wait status, rusage)."""
    deadline = time.monotonic() + limits.wall_seconds
    killed_for: Status | None = None
    baseline = _folder_size(work, 1 << 62)  # the inputs and the code
    next_size_check = 0.0
    waited: tuple[int, int, Any] = (0, 0, None)
    try:
        while True:
            waited = os.wait4(proc.pid, os.WNOHANG)
            if waited[0] == proc.pid:
                break
            now = time.monotonic()
            if now >= deadline:
                killed_for = Status.TIMEOUT
            elif now >= next_size_check:
                next_size_check = now + 0.1
                if _folder_size(work, baseline + limits.output_bytes) - baseline > \
                        limits.output_bytes:
                    killed_for = Status.OUTPUT_LIMIT
            if killed_for is not None:
                _kill_all(proc.pid, uid)
                waited = os.wait4(proc.pid, 0)
                break
            time.sleep(_POLL)
    finally:
        proc.returncode = os.waitstatus_to_exitcode(waited[1]) if waited[0] else -9
        _kill_all(proc.pid, uid)  # whatever the job left behind (its own uid, as root)
    return killed_for, waited[1], waited[2]


def _classify(code: int | None, killed_for: Status | None, _status: int | None,
              limits: Limits, cpu: float) -> tuple[Status, str]:
    if killed_for is Status.TIMEOUT:
        return killed_for, f"still running after {limits.wall_seconds:g} s: killed"
    if killed_for is Status.OUTPUT_LIMIT:
        return killed_for, f"wrote more than {limits.output_bytes} bytes: killed"
    if code is None:
        return Status.KILLED, "the child could not be waited for"
    if code < 0:
        sig = -code
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits.cpu_seconds):
            return Status.CPU_LIMIT, f"used its {limits.cpu_seconds} s of CPU time: killed"
        if sig == signal.SIGXFSZ:
            return Status.OUTPUT_LIMIT, (f"wrote a file (or stdout/stderr) past "
                                         f"{limits.output_bytes} bytes: killed")
        return Status.KILLED, f"died of signal {name}"
    return {
        0: (Status.OK, "ran and returned its outputs"),
        _EXIT_ERROR: (Status.ERROR, "the study's code raised an exception (see stderr)"),
        _EXIT_MEMORY: (Status.MEMORY_LIMIT,
                       f"ran out of memory (limit {limits.memory_bytes} bytes)"),
        _EXIT_BAD_RESULT: (Status.BAD_RESULT, "the study's code did not return "
                           "{name: array} (see stderr)"),
        _EXIT_UNAVAILABLE: (Status.UNAVAILABLE, "required isolation could not be set up"),
        _EXIT_SETUP: (Status.UNAVAILABLE, "the sandbox could not be set up (see isolation)"),
    }.get(code, (Status.ERROR, f"the child exited with code {code}"))
