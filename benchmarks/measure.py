"""Run a command, sample the PSS of its whole process tree every 20 ms, report wall and peak.

    python benchmarks/measure.py --result /tmp/floor-A.json [--interval 0.02] -- CMD ARGS...

This process is the monitor: it starts CMD as a child and, until the child exits, sums
``psutil.Process.memory_full_info().pss`` over the child and every descendant (processes seen
once stay counted while alive, even if re-parented, e.g. Ray's daemons). Wall time runs from
just before the child is spawned (before its interpreter starts) to its exit. PSS counts shared
pages (torch's libraries, fork-shared memory) once across the tree instead of once per process.

If ``--result`` names a JSON file the child wrote, the figures are merged into it under
``"measure"``; they are also printed as one JSON line.

The monitor renices itself to 19 after spawning the child (``--nice 0`` to keep it at normal
priority): sampling costs ~5 ms of kernel time per torch-sized process, and at normal priority it
would take a core away from a multi-process benchmark on this 2-core machine. The price is that
samples thin out while every core is busy (``mean_interval_ms`` in the output says by how much);
peak memory in these workloads is held for whole rounds, so it is still seen.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def _pss(proc: psutil.Process) -> int:
    try:
        return int(proc.memory_full_info().pss)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return 0
    except psutil.AccessDenied:
        try:
            return int(proc.memory_info().rss)
        except psutil.Error:
            return 0


def run(cmd: list[str], interval: float = 0.02, env: dict | None = None,
        stdout=None, stderr=None, nice: int = 19) -> dict:
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr)
    # Reading a process's PSS makes the kernel walk its page tables (~5 ms for a process that
    # imported torch): at 20 ms for a 10-process Ray tree that is a whole core of a 2-core box.
    # The monitor therefore lowers its own priority AFTER spawning the child (which keeps the
    # normal priority): when the benchmark wants every core, sampling waits instead of stealing.
    old_nice = os.nice(0)
    if nice:
        os.nice(nice)
    root = psutil.Process(child.pid)
    known: dict[int, psutil.Process] = {child.pid: root}
    peak = 0
    peak_procs = 0
    samples = 0
    sample_cost = 0.0
    while child.poll() is None:
        ts = time.perf_counter()
        try:
            for p in root.children(recursive=True):
                if p.pid not in known:
                    known[p.pid] = p
        except psutil.NoSuchProcess:
            pass
        total = 0
        alive = 0
        for pid, p in list(known.items()):
            try:
                if not p.is_running():  # also guards against pid reuse (create_time)
                    del known[pid]
                    continue
            except psutil.Error:
                del known[pid]
                continue
            total += _pss(p)
            alive += 1
        if child.poll() is not None:  # exited while we sampled: the sum may be partial
            break
        samples += 1
        if total > peak:
            peak, peak_procs = total, alive
        cost = time.perf_counter() - ts
        sample_cost += cost
        time.sleep(max(0.0, interval - cost))
    code = child.wait()
    wall = time.perf_counter() - t0
    if nice:
        with contextlib.suppress(OSError):  # only root may raise its priority back
            os.nice(old_nice - os.nice(0))
    return {"cmd": cmd, "returncode": code, "wall_s": wall, "peak_pss_mb": peak / 2**20,
            "peak_processes": peak_procs, "samples": samples,
            "mean_sample_ms": 1000 * sample_cost / max(samples, 1),
            "mean_interval_ms": 1000 * wall / max(samples, 1), "interval_s": interval,
            "monitor_nice": nice, "loadavg1_before": load_before,
            "loadavg1_after": os.getloadavg()[0]}


def run_isolated(cmd: list[str], log: Path, interval: float = 0.02, nice: int = 19) -> dict:
    """``run`` in a separate monitor process (so renicing never touches the caller).

    The command's stdout and stderr go to ``log``; returns the measure dict.
    """
    with tempfile.TemporaryDirectory(prefix="measure-") as tmp:
        out = Path(tmp) / "measure.json"
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--interval",
                        str(interval), "--nice", str(nice), "--log", str(log),
                        "--measure-out", str(out), "--", *cmd],
                       stdout=subprocess.DEVNULL, check=False)
        if not out.is_file():
            return {"cmd": cmd, "returncode": -1, "error": "monitor failed"}
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--result", type=Path, help="JSON written by the child, to merge into")
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--nice", type=int, default=19,
                    help="niceness the monitor gives itself after spawning the child (0 = off)")
    ap.add_argument("--log", type=Path, help="send the command's stdout+stderr here")
    ap.add_argument("--measure-out", type=Path, help="also write the figures to this JSON")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("give the command after --")
    if args.log is not None:
        with open(args.log, "w") as fh:
            m = run(cmd, args.interval, nice=args.nice, stdout=fh, stderr=fh)
    else:
        m = run(cmd, args.interval, nice=args.nice)
    if args.measure_out is not None:
        args.measure_out.write_text(json.dumps(m))
    if args.result is not None and args.result.is_file() and m["returncode"] == 0:
        data = json.loads(args.result.read_text())
        data["measure"] = m
        args.result.write_text(json.dumps(data, indent=2))
    print(json.dumps(m))
    sys.exit(m["returncode"])


if __name__ == "__main__":
    main()
