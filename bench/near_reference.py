"""Does a busy phase move a candidate's paired figure less when its reference is a model of its own size?

``HardwareSearch.measure_models`` times every candidate of a search in alternating bursts against the *unpruned*
model and reports ratio x the calibration's baseline: a phase in which another tenant slows every model alike
cancels. A phase of memory traffic does not slow every model alike: the unpruned model (its weights outgrow the
caches) slows more than a 0.35x candidate, so the candidate's ratio drops and it reads fast (session 39, OpenVINO
ResNet-18 @96: the same search's candidates read 1.05-1.16 ms in one batch and 1.37-1.41 ms in the next). A
*near reference* (a calibration model of about the candidates' latency, its figure known from the calibration)
should slow as they do, so ratio-to-near x near's calibrated figure should hold still.

Here: the unpruned model U, a uniform near reference N (``--near-keep``: share of channels kept) and ``--variants``
random allocations around it (every group kept between ``--keep-low`` and ``--keep-high``) are compiled once, then
measured in phases, each ``--rounds`` fresh paired processes (the search's own worker, ``measure.paired``): quiet,
busy (a neighbour process on the other core streaming ``--neighbour-mb`` MB through memory, as
bench/calibration_check.py does), quiet, busy with a cache-sized neighbour (``--small-mb``), quiet. Each variant's
figure in each phase, both ways: ratio to U x U's quiet figure of the first phase, and ratio to N x N's figure of the
first phase (what a search would know from its calibration). Reported: each phase's U burst latency (how loaded it
was) and the mean and worst |drift| of the variants' figures from the first quiet phase, per reference. Then
(``--search-path``, default on) the same variants through the search's own code: ``HardwareSearch.calibrate()``, then
``measure_models`` quiet and busy, once without an aim (against the unpruned model) and once with ``near_ms`` set to
their median quiet figure (against the calibration model nearest it).

Run it alone: it times models, and the neighbour is meant to be the only other load.

Usage: python bench/near_reference.py [--target x86] [--model resnet18_96] [--variants 8] [--rounds 2]
           [--cache ~/.cache/edgeprune] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import calibration_check as cc  # noqa: E402  (bench/ sibling: the neighbour process)
import predictor_accuracy as pa  # noqa: E402  (bench/ sibling: its models and compile step)


def keep_counts(widths: list[int], multiple: int, keep: float) -> list[int]:
    """Each group keeps ``keep`` of its channels, on the multiple (at least one multiple)."""
    return [max(min(w, multiple), min(w, int(round(w * keep / multiple)) * multiple)) for w in widths]


def bursts_of(arts: dict[str, Path], settings, rounds: int) -> dict[str, list[float]]:
    """Burst medians of every artifact over ``rounds`` fresh paired processes (the search's worker)."""
    from edgeprune.measure.paired import PAIRED_MODULE, cycles_for
    from edgeprune.measure.protocol import _child_env

    pooled: dict[str, list[float]] = {n: [] for n in arts}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="edgeprune-near-") as tmp:
            out = Path(tmp) / "r.json"
            cmd = [sys.executable, "-m", PAIRED_MODULE, *[a for n, p in arts.items() for a in ("--artifact", f"{n}={p}")],
                   "--threads", str(settings.threads), "--warmup-s", str(settings.warmup_s),
                   "--cycles", str(cycles_for(settings)), "--out", str(out)]
            subprocess.run(cmd, check=True, env=_child_env(), cwd=pa.REPO)
            res = json.loads(out.read_text())
        for n in arts:
            pooled[n].extend(res["bursts"][n])
    return pooled


def search_path(hs, variants: list[list[int]], ones, args) -> list[dict]:
    """The variants measured by the search's own ``measure_models`` after its calibration, quiet then busy, against
    the unpruned model (no aim) and against the calibration model nearest their median quiet figure (the aim)."""
    hs.calibrate()
    models = {f"v{i}": hs.prune_counts(c, ones) for i, c in enumerate(variants)}
    rows, aim = [], None
    for reference in ("unpruned", "near"):
        if reference == "near":
            hs.near_ms = aim
        figures = []
        for mb in (0, args.neighbour_mb):
            load = cc.Neighbour(mb)
            if mb:
                load.start()
            try:
                figures.append(hs.measure_models(models, rounds=args.rounds))
            finally:
                load.stop()
        if aim is None:
            aim = statistics.median(figures[0].values())
        d = [abs(figures[1][n] / figures[0][n] - 1) * 100 for n in models]
        near = hs.calibration.get("near_reference")
        rows.append({"reference": reference, "aim": "—" if reference == "unpruned" else f"{aim:.3f} ms",
                     "near": near and f"{near['name']} ({near['ms']:.3f} ms)", "quiet_ms": figures[0],
                     "busy_ms": figures[1], "drift": (statistics.mean(d), max(d))})
        pa.log(f"   search path, against {reference}: drift busy vs quiet mean {rows[-1]['drift'][0]:.1f}%")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="x86", help="target profile (its runtime times the models). Default: x86")
    ap.add_argument("--model", default="resnet18_96", choices=sorted(pa.CASES), help="Default: resnet18_96")
    ap.add_argument("--variants", type=int, default=8, help="random allocations measured. Default: 8")
    ap.add_argument("--rounds", type=int, default=2, help="fresh paired processes per phase (a search's). Default: 2")
    ap.add_argument("--near-keep", type=float, default=0.55, help="share kept by the near reference. Default: 0.55")
    ap.add_argument("--keep-low", type=float, default=0.4, help="Default: 0.4")
    ap.add_argument("--keep-high", type=float, default=0.75, help="Default: 0.75")
    ap.add_argument("--neighbour-mb", type=int, default=256, help="memory-streaming neighbour. Default: 256")
    ap.add_argument("--small-mb", type=int, default=8, help="cache-sized neighbour. Default: 8")
    ap.add_argument("--seed", type=int, default=0, help="Default: 0")
    ap.add_argument("--cache", default=str(pa.DEFAULT_CACHE), help="latency-table cache (EDGEPRUNE_CACHE)")
    ap.add_argument("--search-path", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure the variants through HardwareSearch.measure_models after its calibration, "
                         "against the unpruned model and against the near reference. Default: on")
    ap.add_argument("--out", default=None, help="write near_reference.json and .md into this folder")
    args = ap.parse_args()
    os.environ["EDGEPRUNE_CACHE"] = args.cache
    from edgeprune.measure.paired import summarize
    from edgeprune.measure.protocol import MeasureSettings
    from edgeprune.profiles import load_profile
    from edgeprune.search.hardware import HardwareSearch

    start = time.perf_counter()
    model, example = pa.build_net(args.model)
    settings = MeasureSettings(threads=pa.THREADS, warmup_s=0.5, min_seconds=1.0)
    hs = HardwareSearch(model, example, load_profile(args.target), pa.PRECISION, pa.THREADS, settings, progress=False)
    mult = int(hs.profile["channel_multiple"])
    rng = np.random.default_rng(args.seed)
    variants = [[keep_counts([w], mult, float(rng.uniform(args.keep_low, args.keep_high)))[0] for w in hs.widths]
                for _ in range(args.variants)]
    ones = [np.ones(w) for w in hs.widths]
    phases = [("quiet 1", 0), (f"busy: {args.neighbour_mb} MB neighbour", args.neighbour_mb), ("quiet 2", 0),
              (f"busy: {args.small_mb} MB neighbour", args.small_mb), ("quiet 3", 0)]
    records = []
    with tempfile.TemporaryDirectory(prefix="edgeprune-near-") as tmp:
        arts = {"U": pa.compile_model(hs, hs.model, Path(tmp) / "U"),
                "N": pa.compile_model(hs, hs.prune_counts(keep_counts(hs.widths, mult, args.near_keep), ones),
                                      Path(tmp) / "N")}
        for i, c in enumerate(variants):
            arts[f"v{i}"] = pa.compile_model(hs, hs.prune_counts(c, ones), Path(tmp) / f"v{i}")
        pa.log(f"{args.model} on {args.target}: U, N and {len(variants)} variants compiled "
               f"({time.perf_counter() - start:.0f} s)")
        anchor = None
        for name, mb in phases:
            load = cc.Neighbour(mb)
            if mb:
                load.start()
            try:
                bursts = bursts_of(arts, settings, args.rounds)
            finally:
                load.stop()
            by_u, by_n = summarize(bursts, "U"), summarize(bursts, "N")
            if anchor is None:  # what a calibration would know: U's quiet figure, N's figure against it
                anchor = {"U": by_u["U"]["reference_quiet_ms"], "N": by_u["N"]["p50_ms"]}
            rec = {"phase": name, "neighbour_mb": mb, "U_burst_median_ms": statistics.median(bursts["U"]),
                   "U_quiet_ms": by_u["U"]["reference_quiet_ms"], "N_ratio_to_U": by_u["N"]["ratio"],
                   "via_U_ms": [by_u[f"v{i}"]["ratio"] * anchor["U"] for i in range(len(variants))],
                   "via_N_ms": [by_n[f"v{i}"]["ratio"] * anchor["N"] for i in range(len(variants))]}
            records.append(rec)
            pa.log(f"   {name}: U burst median {rec['U_burst_median_ms']:.3f} ms, N/U {rec['N_ratio_to_U']:.3f}")
    search_rows = search_path(hs, variants, ones, args) if args.search_path else []
    first = records[0]
    lines = [f"{args.model} on {args.target} (1 thread), {len(variants)} random allocations (each group keeps "
             f"{args.keep_low:g}-{args.keep_high:g}), near reference N keeps {args.near_keep:g} of every group; "
             f"{args.rounds} paired processes per phase; anchors from quiet 1: U {anchor['U']:.3f} ms, N "
             f"{anchor['N']:.3f} ms", "",
             "| phase | U burst median ms | N / U | variants' drift from quiet 1, via U: mean / worst | "
             "via N: mean / worst |", "|---|---|---|---|---|"]
    for rec in records:
        drift = {}
        for way in ("via_U_ms", "via_N_ms"):
            d = [abs(a / b - 1) * 100 for a, b in zip(rec[way], first[way])]
            drift[way] = (statistics.mean(d), max(d))
            rec[f"{way[:-3]}_drift_pct"] = drift[way]
        lines.append(f"| {rec['phase']} | {rec['U_burst_median_ms']:.3f} | {rec['N_ratio_to_U']:.3f} | "
                     f"{drift['via_U_ms'][0]:.1f}% / {drift['via_U_ms'][1]:.1f}% | "
                     f"{drift['via_N_ms'][0]:.1f}% / {drift['via_N_ms'][1]:.1f}% |")
    if search_rows:
        lines += ["", f"The search's own code path (``HardwareSearch.measure_models`` after ``calibrate()``, "
                      f"{args.rounds} paired processes per batch): the same variants measured quiet, then busy "
                      f"({args.neighbour_mb} MB neighbour); drift of each variant's figure busy vs quiet.", "",
                  "| reference | aim (near_ms) | near reference chosen | drift busy vs quiet: mean / worst |",
                  "|---|---|---|---|"]
        for r in search_rows:
            lines.append(f"| {r['reference']} | {r['aim']} | {r['near'] or '—'} | {r['drift'][0]:.1f}% / "
                         f"{r['drift'][1]:.1f}% |")
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv), "args": vars(args),
           "variants": variants, "anchor": anchor, "phases": records, "search_path": search_rows,
           "total_s": time.perf_counter() - start}
    cc.write_results(args.out, "near_reference", out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
