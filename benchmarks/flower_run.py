"""The same workload in Flower 1.41's simulation engine (run with the Flower venv's Python).

    /work/.flwr-venv/bin/python benchmarks/flower_run.py --workload A --out /tmp/flower-A.json

Flower's current Message API: a ``ServerApp`` whose ``main`` runs
``flwr.serverapp.strategy.FedAvg(fraction_train=1.0, fraction_evaluate=0.0)`` (the Message-API
names of the legacy ``fraction_fit``/``fraction_evaluate``), a ``ClientApp`` with a ``@train``
handler, ``flwr.simulation.run_simulation`` with 10 virtual SuperNodes on the Ray backend and
client resources ``num_cpus=1`` (so on this 2-core machine Ray runs 2 clients at a time).
Each client trains with one torch thread, exactly like the floor (shared ``workloads.py``).

Per-round time: a FedAvg subclass stamps ``time.perf_counter()`` when ``configure_train`` of
round r starts and when ``aggregate_evaluate`` of round r ends (the last call of one iteration
of ``Strategy.start``'s round loop); the difference is the round's wall time, as in the floor.
The pooled standardization statistics are computed by the driver from the CSVs (like the
floor) and handed to the clients through a small .npz; each Ray worker caches its sites' data.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# Ray workers are started by the raylet that this process spawns: they inherit this.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(HERE)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

import numpy as np  # noqa: E402
import torch  # noqa: E402
import workloads as wl  # noqa: E402
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

ENV_WORKLOAD = "FEDCARE_BENCH_WORKLOAD"
ENV_DATA = "FEDCARE_BENCH_DATA_DIR"
ENV_STATS = "FEDCARE_BENCH_STATS"
ENV_OUT = "FEDCARE_BENCH_FLOWER_OUT"


# --------------------------------------------------------------------------- client side
client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    import flower_client_cache as cache  # module state survives between calls in one worker

    torch.set_num_threads(1)
    site = int(context.node_config["partition-id"])
    workload = os.environ[ENV_WORKLOAD]
    w = wl.WORKLOADS[workload]
    trainer, model = cache.site(site)
    rnd = int(msg.content["config"]["server-round"])
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    new = trainer.fit(model, arrays, seed=wl.site_round_seed(wl.STUDY_SEED, rnd, site),
                      lr=w.lr, epochs=w.local_epochs, batch_size=w.batch_size)
    content = RecordDict({"arrays": ArrayRecord(new),
                          "metrics": MetricRecord({"num-examples": trainer.n})})
    return Message(content=content, reply_to=msg)


# --------------------------------------------------------------------------- server side
class TimedFedAvg(FedAvg):
    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.t_begin: dict[int, float] = {}
        self.t_end: dict[int, float] = {}

    def configure_train(self, server_round, arrays, config, grid):
        self.t_begin[server_round] = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        out = super().aggregate_evaluate(server_round, replies)
        self.t_end[server_round] = time.perf_counter()
        return out


server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    workload = os.environ[ENV_WORKLOAD]
    w = wl.WORKLOADS[workload]
    n_features = int(np.load(os.environ[ENV_STATS])["mean"].shape[0])
    model = wl.build_model(workload, n_features, wl.STUDY_SEED)
    names = list(model.state_dict().keys())
    strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=0.0,
                           min_train_nodes=w.n_sites, min_available_nodes=w.n_sites)
    t0 = time.perf_counter()
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(wl.get_weights(model)),
                            num_rounds=w.rounds)
    loop_s = time.perf_counter() - t0
    final = result.arrays.to_numpy_ndarrays()
    out = Path(os.environ[ENV_OUT])
    wl.save_model(out.with_suffix(".npz"), names, final)
    rounds = [strategy.t_end[r] - strategy.t_begin[r] for r in range(1, w.rounds + 1)]
    (out.with_suffix(".server.json")).write_text(json.dumps(
        {"round_seconds": rounds, "loop_s": loop_s, "param_names": names,
         "n_params": int(sum(a.size for a in final))}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=sorted(wl.WORKLOADS), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path, default=wl.DEFAULT_DATA_DIR)
    ap.add_argument("--cpus-per-client", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, help="override the workload's round count (checks)")
    args = ap.parse_args()
    if args.rounds:
        wl.override_rounds(args.workload, args.rounds)
    w = wl.WORKLOADS[args.workload]
    torch.set_num_threads(1)
    args.out = args.out.resolve()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    wl.ensure(args.workload, args.data_dir)
    t_data = time.perf_counter()
    _, (mean, std) = wl.load_sites(args.workload, args.data_dir)
    tmp = Path(tempfile.mkdtemp(prefix="flwr-bench-"))
    stats = tmp / "stats.npz"
    np.savez(stats, mean=mean, std=std)
    os.environ.update({ENV_WORKLOAD: args.workload, ENV_DATA: str(args.data_dir.resolve()),
                       ENV_STATS: str(stats), ENV_OUT: str(args.out)})
    t_sim = time.perf_counter()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=w.n_sites,
                   backend_config={"client_resources": {"num_cpus": args.cpus_per_client,
                                                        "num_gpus": 0.0}})
    t_end = time.perf_counter()
    server = json.loads(args.out.with_suffix(".server.json").read_text())
    result = {
        "impl": "flower", "workload": args.workload, "flwr": _flwr_version(),
        "rounds": w.rounds, "n_sites": w.n_sites, "n_params": server["n_params"],
        "round_seconds": server["round_seconds"],
        "per_round_s": wl.steady_median(server["round_seconds"]),
        "setup_s": t_sim - t_data, "loop_s": server["loop_s"], "simulation_s": t_end - t_sim,
        "internal_total_s": time.perf_counter() - T_START,
        "model_npz": str(args.out.with_suffix(".npz")), "param_names": server["param_names"],
        "client_resources": {"num_cpus": args.cpus_per_client},
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"flower {args.workload}: per-round {result['per_round_s']:.4f}s "
          f"loop {result['loop_s']:.2f}s sim {result['simulation_s']:.2f}s")


def _flwr_version() -> str:
    import flwr

    return flwr.__version__


if __name__ == "__main__":
    main()
