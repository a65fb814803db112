"""A 500 MB model over a slow link: hub and one node (real processes, mutual TLS), the node
reaching the hub only through a bandwidth-limited CONNECT proxy (``HTTPS_PROXY``).

Reports the study's wall time, the bytes the proxy carried, the effective transfer rate and
the peak resident memory of the hub and the node. Success = the study completes (no timeout
anywhere on a transfer that takes far longer than any single socket read).

Run:  python benchmarks/large_model.py [--mb 500] [--rate-mb 25] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "src"))

from tests.integration.network import NetFederation, study_config  # noqa: E402
from tests.integration.slow_proxy import SlowProxy  # noqa: E402

N_FEATURES = 8  # the harness's breast-cancer features


def peak_rss(pids: dict[str, int], stop: threading.Event, out: dict[str, float]) -> None:
    while not stop.is_set():
        for name, pid in pids.items():
            try:
                rss = psutil.Process(pid).memory_info().rss / 2**20
            except psutil.Error:
                continue
            out[name] = max(out.get(name, 0.0), rss)
        stop.wait(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=500.0, help="model size in MB (float32)")
    ap.add_argument("--rate-mb", type=float, default=25.0, help="link speed, MB/s")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    hidden = int(args.mb * 2**20 / 4 / (N_FEATURES + 2))
    message = 4 * ((N_FEATURES + 2) * hidden + 1)
    fed = NetFederation(Path(tempfile.mkdtemp(prefix="fedcare-large-")), sites=("alpha",))
    result: dict = {"model_mb": message / 2**20, "rate_mb_s": args.rate_mb}
    stop = threading.Event()
    peaks: dict[str, float] = {}
    try:
        fed.start_hub()
        with SlowProxy(rate=args.rate_mb * 2**20) as proxy:
            fed.start_node("alpha", env={"HTTPS_PROXY": proxy.url, "NO_PROXY": ""})
            fed.wait_sites(["alpha"])
            assert fed.hub is not None
            pids = {"hub": fed.hub.popen.pid, "node": fed.nodes["alpha"].popen.pid}
            watcher = threading.Thread(target=peak_rss, args=(pids, stop, peaks), daemon=True)
            watcher.start()
            cfg = study_config(name="large", rounds=1, model={"name": "mlp", "hidden": [hidden]},
                               train={"local_steps": 1, "batch_size": 16, "lr": 0.01},
                               run={"round_timeout": 3600})
            t0 = time.perf_counter()
            sid = fed.submit(cfg)
            st = fed.wait_study(sid, timeout=3600)
            result["wall_s"] = time.perf_counter() - t0
            result["status"] = st["status"]
            result["error"] = st.get("error")
            result["proxy_mb_down"] = proxy.bytes_down / 2**20
            result["proxy_mb_up"] = proxy.bytes_up / 2**20
            rec = st["rounds"][0] if st["rounds"] else {}
            result["round_s"] = rec.get("seconds")
    finally:
        stop.set()
        fed.close()
        shutil.rmtree(fed.root, ignore_errors=True)  # ~2.5 GB of models and replies
    result["peak_rss_mb"] = peaks
    moved = result.get("proxy_mb_down", 0) + result.get("proxy_mb_up", 0)
    result["effective_mb_s"] = moved / result["wall_s"] if result.get("wall_s") else None
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "large_model.json").write_text(json.dumps(result, indent=2))
    md = ["# Large model over a slow link", "",
          f"Hub + 1 node (separate processes, mutual TLS, SQLite); the node reaches the hub "
          f"only through a CONNECT proxy limited to {args.rate_mb:g} MB/s per direction. "
          f"MLP {N_FEATURES}-{hidden}-1 = {result['model_mb']:.0f} MB per message; 1 round "
          "(fit task down, update up) + the final evaluation (model down).", "",
          "| measure | value |", "|---|---|",
          f"| study status | {result.get('status')} {result.get('error') or ''} |",
          f"| study wall time | {result.get('wall_s', 0):.0f} s |",
          f"| carried by the proxy | {result.get('proxy_mb_down', 0):.0f} MB down, "
          f"{result.get('proxy_mb_up', 0):.0f} MB up |",
          f"| effective rate over the whole study | {result['effective_mb_s'] or 0:.1f} MB/s |",
          f"| peak RSS hub / node | {peaks.get('hub', 0):.0f} MB / {peaks.get('node', 0):.0f} MB |"]
    (args.out / "large_model.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
