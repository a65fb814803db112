"""``fedcare hub start`` on a state folder it cannot write: one line naming the folder and
what to do, exit 2 (audit F16: a read-only data dir ended the hub with a 307-line traceback).

Running as root, a ``chmod``-ed folder proves nothing (root writes it anyway), so the folders
here are unwritable for everyone: a file where the folder should be, and a read-only bind
mount of a folder holding a hub's state (made in a private mount namespace with
``unshare``, as the audit did with ``mount -o remount,bind,ro``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedcare.hub.provisioning import create_federation
from fedcare.hub.service import HubService, NeverRevoked
from tests.integration.network import free_port

pytestmark = pytest.mark.slow


def _hub_dir(root: Path) -> Path:
    fed = create_federation(root / "fed", hub_host="127.0.0.1", hub_port=free_port(),
                            sites=["alpha"], site_kits=root / "kits")
    return Path(fed.hub.dir)


def _start(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "400"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)


def _one_line_error(done: subprocess.CompletedProcess[str], folder: Path) -> str:
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "Traceback" not in out, out
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out
    assert str(folder) in lines[0] and "--data-dir" in lines[0], out
    return lines[0]


def test_a_file_in_place_of_the_data_dir(tmp_path: Path) -> None:
    hub = _hub_dir(tmp_path)
    file = tmp_path / "hubdata"
    file.write_text("not a folder")
    done = _start([sys.executable, "-m", "fedcare.cli.main", "hub", "start", "--kit",
                   str(hub), "--data-dir", str(file)])
    _one_line_error(done, file)
    assert file.read_text() == "not a folder"


def _can_mount() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs root and `unshare -m` (mount namespace)")
def test_a_read_only_data_dir_holding_a_hubs_state(tmp_path: Path) -> None:
    hub = _hub_dir(tmp_path)
    src, ro = tmp_path / "hubdata", tmp_path / "ro"
    state = HubService(src, revocation=NeverRevoked())
    state.event("test", "some state, as a hub that ran here leaves it")
    state.db.dispose()
    ro.mkdir()
    hub_start = " ".join([sys.executable, "-m", "fedcare.cli.main", "hub", "start",
                          "--kit", str(hub), "--data-dir", str(ro)])
    # Inside a private mount namespace: the mount is gone when the command ends.
    done = _start(["unshare", "-m", "sh", "-c",
                   f"mount --bind {src} {ro} && mount -o remount,bind,ro {ro} && "
                   f"touch {ro}/probe 2>/dev/null && exit 99; exec {hub_start}"])
    assert done.returncode != 99, "the bind mount was not read-only"
    line = _one_line_error(done, ro)
    assert "cannot be written" in line
