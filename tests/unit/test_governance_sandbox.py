"""The sandbox for a study's own code: hostile code fails, is reported, and the parent goes on.

Each hostile job is followed by a benign one in the same test process: the node must still be
able to run the next study after any of these."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from fedcare.governance import sandbox
from fedcare.governance.sandbox import Limits, SandboxError, Status, run_untrusted

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the sandbox uses Linux namespaces and Landlock")

#: Tight limits keep the hostile tests fast.
TIGHT = Limits(cpu_seconds=2, wall_seconds=30, memory_bytes=1 << 30, processes=4,
               output_bytes=1 << 20, open_files=64)
BENIGN = """
import numpy as np

def run(inputs):
    return {"y": inputs["x"] * 2, "n": np.array(len(inputs["x"]))}
"""
X = np.arange(6, dtype=np.float64)


@pytest.fixture(autouse=True, scope="module")
def _sandbox_available() -> None:
    """A kernel or container without user/network namespaces or Landlock cannot run the
    sandbox at all (status ``unavailable``: it refuses, which is the product's behaviour).
    The tests then skip and say why, unless FEDCARE_REQUIRE_SANDBOX=1 (set where the
    sandbox must hold, e.g. on a site's node image) makes that a failure."""
    probe = run_untrusted(BENIGN, {"x": X}, limits=TIGHT)
    if probe.status is Status.UNAVAILABLE and os.environ.get("FEDCARE_REQUIRE_SANDBOX") != "1":
        pytest.skip(f"the sandbox cannot be set up on this machine: {probe.reason}")


def _still_works() -> None:
    result = run_untrusted(BENIGN, {"x": X}, limits=TIGHT)
    assert result.status is Status.OK, (result.reason, result.stderr)
    np.testing.assert_array_equal(result.outputs["y"], X * 2)


def _uid(result: sandbox.SandboxResult) -> int | None:
    found = re.search(r"uid (\d+)", result.isolation.get("identity", ""))
    return int(found.group(1)) if found else None


@pytest.fixture()
def secrets_dir(tmp_path: Path) -> Path:
    """A node's folder: its private key (0600), its certificate and ledger (0644)."""
    (tmp_path / "site.key").write_text("-----BEGIN PRIVATE KEY----- secret")
    os.chmod(tmp_path / "site.key", 0o600)
    (tmp_path / "site.crt").write_text("certificate")
    (tmp_path / "ledger.jsonl").write_text('{"spent": 1.0}\n')
    return tmp_path


# --- the good path ------------------------------------------------------------------------
def test_a_benign_job_gets_only_its_arrays_and_returns_arrays() -> None:
    result = run_untrusted(BENIGN, {"x": X}, limits=TIGHT)
    assert result.ok and result.exit_code == 0 and result.signal is None
    np.testing.assert_array_equal(result.outputs["y"], X * 2)
    assert int(result.outputs["n"]) == 6


def test_every_isolation_layer_holds_here_as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the full sandbox needs root (fedcare's CI runs as root)")
    isolation = run_untrusted(BENIGN, {"x": X}, limits=TIGHT).isolation
    assert isolation["network"].startswith("new network namespace")
    assert isolation["filesystem"].startswith("landlock ABI")
    assert isolation["mounts"].startswith("private mount namespace, chroot")
    assert re.fullmatch(r"uid \d+, no capabilities, no supplementary groups",
                        isolation["identity"])
    assert isolation["missing"] == ""


def test_the_code_may_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(BENIGN)
    assert run_untrusted(tmp_path / "model.py", {"x": X}, limits=TIGHT).ok


def test_the_job_folder_is_removed_afterwards(tmp_path: Path) -> None:
    run_untrusted(BENIGN, {"x": X}, limits=TIGHT, folder=tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- secrets of the node ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["site.key", "site.crt", "ledger.jsonl"])
def test_the_code_cannot_read_the_nodes_key_certificate_or_ledger(secrets_dir: Path,
                                                                  name: str) -> None:
    code = f"""
import numpy as np

def run(inputs):
    try:
        data = open({str(secrets_dir / name)!r}, "rb").read()
    except OSError as exc:
        return {{"denied": np.array(exc.errno)}}
    return {{"leak": np.frombuffer(data, dtype=np.uint8)}}
"""
    result = run_untrusted(code, {"x": X}, limits=TIGHT)
    assert result.ok and "leak" not in result.outputs and "denied" in result.outputs
    _still_works()


def test_the_code_cannot_list_the_nodes_folder_or_the_parents_cwd(secrets_dir: Path) -> None:
    code = f"""
import os
import numpy as np

def run(inputs):
    seen = []
    for folder in ({str(secrets_dir)!r}, "/work", "/root", "/etc", "/home", "/tmp"):
        try:
            seen += os.listdir(folder)
        except OSError:
            pass
    return {{"seen": np.array(len(seen))}}
"""
    result = run_untrusted(code, {"x": X}, limits=TIGHT)
    assert result.ok and int(result.outputs["seen"]) == 0


def test_the_code_sees_no_environment_and_no_inherited_descriptor(
        secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDCARE_HUB_TOKEN", "s3cret")
    fd = os.open(secrets_dir / "site.key", os.O_RDONLY)
    os.set_inheritable(fd, True)
    try:
        code = f"""
import os
import numpy as np

def run(inputs):
    try:
        os.read({fd}, 100)
        leaked = 1
    except OSError:
        leaked = 0
    return {{"env": np.array(len([k for k in os.environ if "TOKEN" in k])),
             "fd": np.array(leaked), "cwd_empty": np.array(sorted(os.listdir(".")) ==
                                                           ["code", "in", "out", "tmp"])}}
"""
        result = run_untrusted(code, {"x": X}, limits=TIGHT)
    finally:
        os.close(fd)
    assert result.ok, result.stderr
    assert (int(result.outputs["env"]), int(result.outputs["fd"])) == (0, 0)
    assert bool(result.outputs["cwd_empty"])


# --- network ----------------------------------------------------------------------------------
def test_the_code_cannot_reach_a_loopback_server() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    code = f"""
import socket
import numpy as np

def run(inputs):
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"stolen")
        return {{"connected": np.array(1)}}
    except OSError as exc:
        return {{"refused": np.array(exc.errno or -1)}}
"""
    try:
        result = run_untrusted(code, {"x": X}, limits=TIGHT)
        server.setblocking(False)  # a connection would wait in the backlog
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()
    assert result.ok and "refused" in result.outputs
    _still_works()


def test_the_code_cannot_reach_a_unix_socket_of_the_node(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the sandbox's own root (which hides unix sockets) needs root")
    path = tmp_path / "db.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o777)  # like a database's local socket: anyone may connect
    server.listen(1)
    code = f"""
import socket
import numpy as np

def run(inputs):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect({str(path)!r})
        return {{"connected": np.array(1)}}
    except OSError as exc:
        return {{"refused": np.array(exc.errno or -1)}}
"""
    try:
        result = run_untrusted(code, {"x": X}, limits=TIGHT)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()
    assert result.ok and "refused" in result.outputs


# --- resources --------------------------------------------------------------------------------
def test_a_fork_bomb_is_stopped_and_leaves_no_process_behind() -> None:
    code = """
import os

def run(inputs):
    while True:
        try:
            os.fork()
        except OSError:
            pass
"""
    result = run_untrusted(code, {"x": X},
                           limits=Limits(cpu_seconds=1, wall_seconds=4, memory_bytes=1 << 30,
                                         processes=4, output_bytes=1 << 20))
    assert result.status in (Status.CPU_LIMIT, Status.TIMEOUT), result.reason
    uid = _uid(result)
    if uid is not None:
        assert sandbox._processes_of(uid) == []
    _still_works()


def test_a_50_gb_allocation_fails_as_a_memory_limit() -> None:
    code = """
import numpy as np

def run(inputs):
    big = np.ones(50 * 2**30 // 8)
    return {"big": big}
"""
    result = run_untrusted(code, {"x": X}, limits=TIGHT)
    assert result.status is Status.MEMORY_LIMIT and "out of memory" in result.reason
    _still_works()


def test_an_infinite_loop_is_stopped_at_the_cpu_limit() -> None:
    code = "def run(inputs):\n    while True:\n        pass\n"
    result = run_untrusted(code, {"x": X}, limits=Limits(cpu_seconds=1, wall_seconds=60,
                                                         memory_bytes=1 << 30))
    assert result.status is Status.CPU_LIMIT and result.signal in (signal.SIGXCPU,
                                                                   signal.SIGKILL)
    _still_works()


def test_a_loop_that_ignores_sigxcpu_is_killed_a_second_later() -> None:
    code = ("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
            "def run(inputs):\n    while True:\n        pass\n")
    result = run_untrusted(code, {"x": X}, limits=Limits(cpu_seconds=1, wall_seconds=60,
                                                         memory_bytes=1 << 30))
    assert result.status is Status.CPU_LIMIT and result.signal == signal.SIGKILL
    _still_works()


def test_a_sleeping_job_is_killed_at_the_wall_clock_limit() -> None:
    code = "import time\ndef run(inputs):\n    time.sleep(60)\n"
    result = run_untrusted(code, {"x": X}, limits=Limits(cpu_seconds=5, wall_seconds=1.0,
                                                         memory_bytes=1 << 30))
    assert result.status is Status.TIMEOUT and result.seconds < 5
    _still_works()


def test_huge_output_on_stdout_is_stopped() -> None:
    code = "import sys\ndef run(inputs):\n    while True:\n        sys.stdout.write('x' * 65536)\n"
    result = run_untrusted(code, {"x": X}, limits=TIGHT)
    assert result.status is Status.OUTPUT_LIMIT and result.signal == signal.SIGXFSZ
    _still_works()


def test_a_huge_returned_array_is_stopped() -> None:
    code = "import numpy as np\ndef run(inputs):\n    return {'w': np.zeros(10_000_000)}\n"
    result = run_untrusted(code, {"x": X}, limits=TIGHT)
    assert result.status is Status.OUTPUT_LIMIT and not result.outputs


def test_many_small_files_are_stopped_by_the_folder_limit() -> None:
    code = """
import time

def run(inputs):
    for i in range(100_000):
        with open(f"tmp/f{i}", "wb") as fh:
            fh.write(b"x" * 60_000)
    time.sleep(30)
"""
    result = run_untrusted(code, {"x": X}, limits=Limits(cpu_seconds=5, wall_seconds=30,
                                                         memory_bytes=1 << 30,
                                                         output_bytes=2 << 20))
    assert result.status is Status.OUTPUT_LIMIT, result.reason
    _still_works()


# --- crashes and escapes ------------------------------------------------------------------------
def test_a_job_that_dies_of_a_signal_is_reported() -> None:
    code = "import os, signal\ndef run(inputs):\n    os.kill(os.getpid(), signal.SIGSEGV)\n"
    result = run_untrusted(code, {"x": X}, limits=TIGHT)
    assert result.status is Status.KILLED and result.signal == signal.SIGSEGV
    assert "SIGSEGV" in result.reason
    _still_works()


def test_the_code_cannot_signal_the_node() -> None:
    code = """
import os, signal
import numpy as np

def run(inputs):
    try:
        os.kill(os.getppid(), signal.SIGTERM)
        return {"sent": np.array(1)}
    except OSError as exc:
        return {"refused": np.array(exc.errno)}
"""
    result = run_untrusted(code, {"x": X}, limits=TIGHT)
    assert result.ok and "refused" in result.outputs
    _still_works()


def test_ctypes_cannot_undo_the_sandbox(secrets_dir: Path) -> None:
    code = f"""
import ctypes
import numpy as np

def run(inputs):
    libc = ctypes.CDLL(None, use_errno=True)
    out = {{"setuid": libc.setuid(0), "unshare_net": libc.unshare(0x40000000),
            "mount": libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)}}
    libc.unshare(0x10000000)  # a user namespace, if the kernel allows one: Landlock holds
    try:
        open({str(secrets_dir / "site.key")!r}, "rb").read()
        out["read"] = 1
    except OSError:
        out["read"] = -1
    return {{k: np.array(v) for k, v in out.items()}}
"""
    result = run_untrusted(code, {"x": X}, limits=TIGHT)
    assert result.ok, result.stderr
    assert {k: int(v) for k, v in result.outputs.items()} == {
        "setuid": -1, "unshare_net": -1, "mount": -1, "read": -1}
    _still_works()


def test_a_ctypes_crash_is_a_signal_not_harm() -> None:
    # an address no user-space mapping can have, so the read always faults
    code = "import ctypes\ndef run(inputs):\n    return ctypes.string_at(0xffffffffffff0000, 8)\n"
    result = run_untrusted(code, {"x": X}, limits=TIGHT)
    assert result.status is Status.KILLED and result.signal == signal.SIGSEGV
    _still_works()


# --- bad code and bad results -------------------------------------------------------------------
@pytest.mark.parametrize(("code", "status", "stderr"), [
    ("def run(inputs):\n    raise RuntimeError('boom')\n", Status.ERROR, "RuntimeError: boom"),
    ("def run(inputs) oops\n", Status.ERROR, "SyntaxError"),
    ("def other(inputs):\n    return {}\n", Status.ERROR, "AttributeError"),
    ("def run(inputs):\n    return [1, 2]\n", Status.BAD_RESULT, "must return"),
    ("import sys\ndef run(inputs):\n    sys.exit(0)\n", Status.BAD_RESULT, "instead of returning"),
    ("import numpy as np\ndef run(inputs):\n    return {'o': np.array([object()])}\n",
     Status.BAD_RESULT, "cannot write output"),
])
def test_bad_code_is_reported_with_its_error(code: str, status: Status, stderr: str) -> None:
    result = run_untrusted(code, {"x": X}, limits=TIGHT)
    assert result.status is status and stderr in result.stderr, (result.reason, result.stderr)
    assert not result.outputs


def test_outputs_that_are_links_or_not_arrays_are_refused(tmp_path: Path,
                                                          secrets_dir: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "leak.npy").symlink_to(secrets_dir / "site.key")
    assert "a link?" in str(sandbox._read_outputs(out, 1 << 20)[1])
    (out / "leak.npy").unlink()
    os.link(secrets_dir / "ledger.jsonl", out / "leak.npy")
    assert "plain file of its own" in str(sandbox._read_outputs(out, 1 << 20)[1])
    (out / "leak.npy").unlink()
    (out / "leak.npy").write_bytes(b"not an array")
    assert "not an array file" in str(sandbox._read_outputs(out, 1 << 20)[1])
    (out / "leak.npy").unlink()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (10**12,)})
    (out / "huge.npy").write_bytes(b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"12345678")
    assert "header says 8000000000000 bytes" in str(sandbox._read_outputs(out, 1 << 20)[1])
    (out / "huge.npy").unlink()
    np.save(out / "fine.npy", np.arange(3))
    arrays, problem = sandbox._read_outputs(out, 1 << 20)
    assert problem is None and arrays["fine"].tolist() == [0, 1, 2]
    (out / "../x.npy").write_bytes(b"")
    (out / "bad name.npy").write_bytes(b"")
    assert "is not NAME.npy" in str(sandbox._read_outputs(out, 1 << 20)[1])


# --- the weaker mode and wrong calls -------------------------------------------------------------
def test_without_root_the_sandbox_refuses_unless_weaker_is_allowed(
        monkeypatch: pytest.MonkeyPatch, secrets_dir: Path) -> None:
    monkeypatch.setattr(sandbox, "_privileged", lambda: False)
    refused = run_untrusted(BENIGN, {"x": X}, limits=TIGHT)
    assert refused.status is Status.UNAVAILABLE and "allow_weaker" in refused.reason
    code = f"""
import numpy as np

def run(inputs):
    try:
        open({str(secrets_dir / "site.key")!r}, "rb").read()
        return {{"read": np.array(1)}}
    except OSError:
        return {{"read": np.array(-1)}}
"""
    weaker = run_untrusted(code, {"x": X}, limits=TIGHT, allow_weaker=True)
    assert weaker.ok, (weaker.reason, weaker.stderr, weaker.isolation)
    assert int(weaker.outputs["read"]) == -1  # Landlock alone still hides the key
    assert weaker.isolation["identity"].startswith("the node's own user")


@pytest.mark.parametrize(("inputs", "match"), [
    ({"bad name": X}, "identifier"),
    ({"x": np.array([object()])}, "numeric or boolean"),
    ({"x": np.array(["a"])}, "numeric or boolean"),
    ({f"x{i}": X for i in range(65)}, "at most 64"),
])
def test_wrong_inputs_are_refused_before_anything_runs(inputs: dict[str, object],
                                                       match: str) -> None:
    with pytest.raises(SandboxError, match=match):
        run_untrusted(BENIGN, inputs, limits=TIGHT)


def test_wrong_limits_and_entry_are_refused() -> None:
    with pytest.raises(SandboxError, match="cpu_seconds"):
        Limits(cpu_seconds=0)
    with pytest.raises(SandboxError, match="wall_seconds"):
        Limits(wall_seconds=float("nan"))
    with pytest.raises(SandboxError, match="entry"):
        run_untrusted(BENIGN, {"x": X}, entry="os.system")
