"""CKKS homomorphic aggregation: cost at 10 sites x 1 M parameters, and precision vs moduli.

    python benchmarks/he.py                      # writes benchmarks/results/he.md (+ .json)
    python benchmarks/he.py --params 100000      # quick

Part 1 (one process, the machine has 2 cores and TenSEAL's vector ops hold the GIL): each
site encrypts ``[n_i * x_i, n_i]`` (fedcare.privacy.he.encrypt_weighted) for a 1 M-value
update; the hub, holding only the public context, adds the 10 blobs; a site decrypts the
weighted mean. Reported: seconds per step (median over sites for encryption), bytes on the
wire against the float32 plaintext, and the max |error| against numpy's float64 mean.
Target: hub aggregation <= 10 s.

Part 2: max |error| of decrypt(sum of k ciphertexts) against the float64 sum, for k = 10 and
100 sites, coefficient moduli [60, 40] and [60, 40, 60], values of magnitude 1 and 1e4 (as
when sites pre-multiply by example counts), and whether the encoder refuses the values.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from fedcare.core.errors import ValidationError
from fedcare.privacy.he import (
    HEContext,
    HEParams,
    create_federation_context,
    decrypt_vector,
    decrypt_weighted_mean,
    encrypt_vector,
    encrypt_weighted,
    sum_ciphertexts,
)

RESULTS = Path(__file__).parent / "results"


def aggregation(n_sites: int, n_params: int, seed: int = 0) -> dict[str, float]:
    secret_bytes, public_bytes = create_federation_context()
    site = HEContext.load_secret(secret_bytes)
    hub = HEContext.load_public(public_bytes)
    rng = np.random.default_rng(seed)
    updates = [rng.normal(0, 0.1, n_params).astype(np.float32) for _ in range(n_sites)]
    counts = [int(c) for c in rng.integers(50, 5000, n_sites)]
    enc_s, blobs = [], {}
    for i, (x, n) in enumerate(zip(updates, counts, strict=True)):
        t = time.perf_counter()
        blobs[f"site-{i + 1}"] = encrypt_weighted(site, x, n)
        enc_s.append(time.perf_counter() - t)
    t = time.perf_counter()
    agg = sum_ciphertexts(hub, blobs)
    hub_s = time.perf_counter() - t
    t = time.perf_counter()
    mean, total = decrypt_weighted_mean(site, agg)
    dec_s = time.perf_counter() - t
    ref = np.average(np.stack(updates).astype(np.float64), axis=0, weights=counts)
    blob_bytes = len(next(iter(blobs.values())))
    return {
        "sites": n_sites, "parameters": n_params,
        "encrypt_s_median": statistics.median(enc_s), "encrypt_s_max": max(enc_s),
        "hub_sum_s": hub_s, "decrypt_s": dec_s,
        "ciphertext_bytes_per_site": blob_bytes, "aggregate_bytes": len(agg),
        "plaintext_bytes_float32": 4 * n_params,
        "expansion": blob_bytes / (4 * n_params),
        "max_abs_error_mean": float(np.abs(mean - ref).max()),
        "total_weight_error": abs(total - sum(counts)),
        "public_context_bytes": len(public_bytes), "secret_context_bytes": len(secret_bytes),
    }


def precision(moduli: tuple[int, ...], sites: int, magnitude: float, seed: int = 0) -> dict:
    ctx = HEContext.create(HEParams(coeff_mod_bit_sizes=moduli, max_sites=sites))
    rng = np.random.default_rng(seed)
    xs = rng.normal(0, magnitude, (sites, ctx.params.slots))
    row = {"moduli": list(moduli), "sites": sites, "magnitude": magnitude,
           "max_abs_value_allowed": ctx.params.max_abs_value}
    try:
        blobs = [encrypt_vector(ctx, x) for x in xs]
    except ValidationError as exc:
        return row | {"refused": str(exc).split(";")[0]}
    out = decrypt_vector(ctx, sum_ciphertexts(ctx.public(), blobs))
    return row | {"max_abs_error": float(np.abs(out - xs.sum(0)).max()),
                  "max_abs_sum": float(np.abs(xs.sum(0)).max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=RESULTS / "he.md")
    args = ap.parse_args()
    agg = aggregation(args.sites, args.params)
    prec = [precision(m, k, mag) for m in ((60, 40), (60, 40, 60)) for k in (10, 100)
            for mag in (1.0, 1e4)]
    stamp = time.strftime("%Y-%m-%d %H:%M")
    lines = [f"# CKKS aggregation ({stamp}, {platform.python_version()}, "
             f"N=8192, moduli [60, 40, 60], scale 2^40)", "",
             f"{agg['sites']} sites x {agg['parameters']:,} parameters, one process:", "",
             "| step | seconds |", "|---|---|",
             f"| encrypt per site (median / max) | {agg['encrypt_s_median']:.2f} / "
             f"{agg['encrypt_s_max']:.2f} |",
             f"| hub sum of {agg['sites']} blobs (target <= 10 s) | {agg['hub_sum_s']:.2f} |",
             f"| decrypt aggregate | {agg['decrypt_s']:.2f} |", "",
             f"ciphertext per site {agg['ciphertext_bytes_per_site'] / 1e6:.1f} MB vs float32 "
             f"{agg['plaintext_bytes_float32'] / 1e6:.1f} MB: expansion "
             f"{agg['expansion']:.1f}x; public context {agg['public_context_bytes'] / 1e6:.2f} "
             f"MB, secret context file {agg['secret_context_bytes'] / 1e6:.2f} MB; max |error| "
             f"of the mean {agg['max_abs_error_mean']:.1e}, of the total weight "
             f"{agg['total_weight_error']:.1e}.", "",
             "Precision: max |decrypt(sum) - sum| over one 4096-slot ciphertext per site", "",
             "| moduli | sites | value sd | allowed max abs per site | max abs sum | "
             "max abs error |", "|---|---|---|---|---|---|"]
    for r in prec:
        err = (f"{r['max_abs_error']:.1e}" if "max_abs_error" in r
               else f"refused ({r['refused'].replace('|', '')})")
        lines.append(f"| {r['moduli']} | {r['sites']} | {r['magnitude']:g} | "
                     f"{r['max_abs_value_allowed']:.3g} | {r.get('max_abs_sum', float('nan')):.3g}"
                     f" | {err} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"aggregation": agg, "precision": prec},
                                                        indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
