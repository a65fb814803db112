"""The hub's disk fills up during a study (audit finding F14, ``expF.py``): the study is
paused, not failed; it stays paused across a hub restart; once the file system is grown,
``fedcare study resume`` continues it from its last completed round to the end.

The hub's state folder is on a small tmpfs, as in the audit, which needs root (``mount``):
the test is skipped where mounting is not permitted. ``tests/unit/test_hub_study_pause.py``
injects the same errors without root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.network import NetFederation, study_config
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture

ROUNDS = 8
#: Left free on the tmpfs once the hub runs: room for about two rounds' checkpoints of the
#: study's model (an MLP of ~69 k parameters, ~280 KB a blob, two blobs a round).
HEADROOM = 1_400_000


def _mount(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB tmpfs (unmounted afterwards); skipped without the right to mount."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    folder = tmp_path / "small"
    folder.mkdir()
    done = _mount(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(folder)])
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        if _mount(["umount", str(folder)]).returncode != 0:
            _mount(["umount", "-l", str(folder)])  # still busy: detach it


def _fill(folder: Path, leave: int) -> None:
    """Write a ballast file so that only about ``leave`` bytes stay free."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    with open(folder / "ballast", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
        fh.flush()
        os.fsync(fh.fileno())


def test_a_full_disk_pauses_the_study_and_resume_finishes_it(
        net: Callable[..., NetFederation], small_fs: Path) -> None:
    fed = net()
    data_dir = small_fs / "hubdata"
    try:
        fed.start(data_dir=data_dir)
        _fill(small_fs, HEADROOM)
        cfg = study_config(name="diskfull", rounds=ROUNDS,
                           model={"name": "mlp", "hidden": [256, 256]},
                           # a node's first task (importing torch) can take 30 s on a busy box
                           run={"round_timeout": 240})
        study_id = fed.submit(cfg)

        def stopped() -> bool:
            if fed.status(study_id)["status"] not in ("running", "pending_approval"):
                return True
            # The pause itself may not fit on the disk yet: the study's thread retries it.
            return "cannot record it" in (fed.hub.tail(200_000) if fed.hub else "")

        fed.wait_until("the study to stop on the full disk", stopped, 300)
        if fed.status(study_id)["status"] == "running":
            _mount(["mount", "-o", "remount,size=256m", str(small_fs)])
            fed.wait_study(study_id, 120)
        st = fed.status(study_id)
        assert st["status"] == "paused", st
        assert 0 <= st["current_round"] < ROUNDS
        assert "No space left on device" in st["error"] or "disk is full" in st["error"]
        assert f"fedcare study resume {study_id}" in st["error"]
        paused_at = st["current_round"]

        # Another study submitted while the disk is full (the audit's was left `running` with
        # its thread dead): refused with a 503 that says why, or accepted and then paused,
        # completed, or still retrying to record its end (see below).
        r = fed.call("POST", "/v1/studies", json=study_config(name="small", rounds=2,
                                                              run={"round_timeout": 240}))
        assert r.status_code in (201, 503), r.text
        if r.status_code == 503:
            assert "cannot write its storage" in r.json()["detail"]
        second = r.json()["study_id"] if r.status_code == 201 else None

        # The audit restarted the hub after growing the file system: the study stays
        # paused (it is not resumed behind the researcher's back, nor failed).
        fed.kill_hub()
        assert _mount(["mount", "-o", "remount,size=256m", str(small_fs)]).returncode == 0
        fed.start_hub(data_dir=data_dir)
        assert fed.status(study_id)["status"] == "paused"
        assert f"study {study_id} is paused" in fed.hub.tail(200_000)  # type: ignore[union-attr]

        done = fed.cli("study", "resume", study_id, "--federation", str(fed.fed_dir))
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"resumed after round {paused_at}" in done.stdout
        again = fed.cli("study", "resume", study_id, "--federation", str(fed.fed_dir))
        assert again.returncode == 2 and "409" in again.stderr  # running: not twice

        if second is not None:
            # Paused: resumed like the first; running when the hub was killed: resumed by
            # the restart.
            if fed.status(second)["status"] == "paused":
                assert fed.call("POST", f"/v1/studies/{second}/resume").status_code == 200
            assert fed.wait_study(second, 300)["status"] == "completed"
        st = fed.wait_study(study_id, 300)
        assert (st["status"], st["current_round"]) == ("completed", ROUNDS), st
        assert [r["round"] for r in st["rounds"]] == list(range(1, ROUNDS + 1))
        kinds = [e["kind"] for e in fed.events(study_id)]
        assert "resume" in kinds
    finally:
        fed.close()  # before the tmpfs is unmounted
