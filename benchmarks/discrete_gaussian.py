"""Discrete Gaussian noise cost: 1 M coordinates, exact sampler vs numpy's float normal.

    python benchmarks/discrete_gaussian.py [--repeats 5] [--length 1000000]

Times (median over repeats) :func:`fedcare.privacy.dp.discrete_gaussian.sample_discrete_gaussian`
from the secure source (ChaCha20 keyed by ``os.urandom``) at grid-typical variances - the
central noise of z = 1, C = 1 on the 2^-24 grid, and one of 10 distributed shares of it - and
a small one, next to ``numpy.random.Generator.standard_normal`` (PCG64, not secure, the float
sampler Mironov 2012 attacks) and the whole site step ``privatize_update`` (clip, grid
rounding with the exact L2 check, noise share). OpenDP's exact sampler is timed too when the
``opendp`` package is installed (it is not a fedcare dependency). Writes
``results/discrete_gaussian.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

from fedcare.core.params import Parameters
from fedcare.privacy.dp import PrivacySpec, privatize_update
from fedcare.privacy.dp.discrete_gaussian import grid_variance, sample_discrete_gaussian

RESULTS = Path(__file__).parent / "results"


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _opendp(n: int, sigma: float) -> Callable[[], object] | None:
    try:
        import opendp.prelude as dp
    except ImportError:
        return None
    dp.enable_features("contrib")
    meas = dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T="i64")),
                              dp.l2_distance(T="i64"), scale=sigma)
    zeros = [0] * n
    return lambda: meas(zeros)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--length", type=int, default=1_000_000)
    args = ap.parse_args()
    n, r = args.length, args.repeats
    rows: list[dict[str, object]] = []

    def add(name: str, fn: Callable[[], object], repeats: int = r) -> None:
        sec = _median_seconds(fn, repeats)
        rows.append({"case": name, "seconds": sec, "values_per_second": n / sec})
        print(f"{name:<58} {sec:8.3f} s  {n / sec / 1e6:7.2f} M/s", flush=True)

    rng = np.random.default_rng(0)
    add("numpy float standard_normal (PCG64, not secure)", lambda: rng.standard_normal(n))
    central = grid_variance(1.0, 1.0, 24)
    add("discrete Gaussian, sigma = 2^24 (central, z=C=1, f=24)",
        lambda: sample_discrete_gaussian(central, n))
    share = grid_variance(1.0, 1.0, 24, shares=10)
    add(f"discrete Gaussian, sigma = 2^24/sqrt(10) ({math.sqrt(share):.3g})",
        lambda: sample_discrete_gaussian(share, n))
    add("discrete Gaussian, sigma = 1.5", lambda: sample_discrete_gaussian(Fraction(9, 4), n))
    spec = PrivacySpec("dp_fedavg_distributed", clip=1.0, noise_multiplier=1.0)
    g = Parameters({"w": np.zeros(n, dtype=np.float32)})
    s = Parameters({"w": rng.normal(scale=0.01, size=n).astype(np.float32)})
    add("privatize_update (clip + grid + share of 10), float32",
        lambda: privatize_update(g, s, spec, n_sites=10))
    od = _opendp(n, 2.0**24)
    if od is not None:
        add("OpenDP make_gaussian (exact, contrib), sigma = 2^24", od, repeats=1)

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "discrete_gaussian.json").write_text(json.dumps(
        {"length": n, "repeats": r, "rows": rows}, indent=2))
    lines = [f"# Discrete Gaussian noise: {n:,} values, median of {r} runs", "",
             "| case | seconds | M values/s |", "| --- | ---: | ---: |"]
    lines += [f"| {row['case']} | {row['seconds']:.3f} | "
              f"{float(row['values_per_second']) / 1e6:.2f} |" for row in rows]
    (RESULTS / "discrete_gaussian.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
