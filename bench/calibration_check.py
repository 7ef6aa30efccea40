"""Does the calibration's check save a prediction from a busy phase? Side by side on one model and runtime.

``HardwareSearch.calibrate`` measures the unpruned model and its calibration variants paired (alternating bursts
in fresh processes), then, since session 36, measures the unpruned model once more on its own: if that check is
more than ``CALIBRATION_CHECK`` faster than the calibration had it, the calibration ran in a busier phase than the
machine is in now, and it is measured again (a busy phase does not slow every model alike, so its ratios are off,
not only its scale). This script makes such a phase on purpose: a *neighbour* process on the other core streams a
large array through memory (``--neighbour-mb``), which slows a model whose weights outgrow the caches much more
than its pruned variants. Three calibrations of the same search, each a fresh ``HardwareSearch`` on the same table:

1. ``busy, no check``: the neighbour runs through the whole calibration, the check turned off (``repeats=0``: the
   calibration as it was before the check);
2. ``busy first pass, check``: the neighbour runs through the first pass only and stops when it ends, as a burst of
   load would; the check then sees the quiet machine;
3. ``quiet, check``: no neighbour (what the check costs when nothing happens).

Then ``--variants`` random allocations and the unpruned model are measured paired in ``--rounds`` fresh processes
on the quiet machine, and each calibration's predictor is scored on them: within ±10% and median |error|, against
the variants' figures on that calibration's own scale (their ratio to the unpruned model times the calibration's
baseline, as the search puts every later measurement) and against their quiet figures in ms.

Run it alone: it times models, and the neighbour is meant to be the only other load.

Usage: python bench/calibration_check.py [--target x86] [--model resnet18_96] [--variants 30] [--rounds 3]
           [--neighbour-mb 256] [--cache ~/.cache/edgeprune] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import predictor_accuracy as pa  # noqa: E402  (bench/ sibling: its models, table child, variants and statistics)

ARMS = ("busy, no check", "busy first pass, check", "quiet, check")


def neighbour(mb: int) -> int:
    """Child mode: copy an ``mb``-MB array back and forth until killed (memory traffic on the other core)."""
    a = np.ones(mb * 1024 * 1024 // 8)
    b = np.empty_like(a)
    while True:
        np.copyto(b, a)
        np.copyto(a, b)


class Neighbour:
    """The neighbour process: started on ``start()``, killed on ``stop()`` (idempotent)."""

    def __init__(self, mb: int):
        self.mb, self.proc = mb, None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--neighbour", str(self.mb)])
        time.sleep(2.0)  # its array allocated and streaming

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            time.sleep(1.0)


def calibrate_arm(arm: str, model_name: str, target: str, mb: int) -> dict:
    """One calibration of a fresh search (the table from the cache) under ``arm``'s load; its search and record."""
    from edgeprune.measure.protocol import MeasureSettings
    from edgeprune.profiles import load_profile
    from edgeprune.search.hardware import HardwareSearch

    model, example = pa.build_net(model_name)
    hs = HardwareSearch(model, example, load_profile(target), pa.PRECISION, pa.THREADS,
                        MeasureSettings(threads=pa.THREADS, warmup_s=0.5, min_seconds=1.0), progress=False)
    load = Neighbour(mb)
    if arm.startswith("busy"):
        load.start()
    if arm == "busy first pass, check":
        measure = hs.measure_models

        def first_pass_busy(models, rounds=2):
            try:
                return measure(models, rounds)
            finally:
                load.stop()  # the burst of load ends with the first pass; the check and later passes run quiet

        hs.measure_models = first_pass_busy
    t0 = time.perf_counter()
    try:
        fit = hs.calibrate(repeats=0) if arm == "busy, no check" else hs.calibrate()
    finally:
        load.stop()
    seconds = time.perf_counter() - t0
    pa.log(f"   {arm}: {seconds:.0f} s, passes " + "; ".join(
        f"unpruned {p['unpruned_ms']:.3f} ms" + (f", check {p['check_ms']:.3f} ms" if p["check_ms"] else "")
        + (" (kept)" if p["kept"] else "") for p in fit["calibration"]["passes"]))
    return {"hs": hs, "record": {"arm": arm, "seconds": seconds, "baseline_ms": hs.baseline_ms,
                                 "passes": fit["calibration"]["passes"],
                                 "fit": {k: fit[k] for k in ("scale", "offset_ms", "weight_ms_per_million")},
                                 "calibration_ms": [m for _, m in hs.samples]}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="x86", help="target profile (its runtime times the models). Default: x86")
    ap.add_argument("--model", default="resnet18_96", choices=sorted(pa.CASES),
                    help="model and input size (bench/predictor_accuracy.py's cases). Default: resnet18_96")
    ap.add_argument("--variants", type=int, default=30, help="random allocations that score the calibrations. "
                                                                "Default: 30")
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes measuring the variants. Default: 3")
    ap.add_argument("--neighbour-mb", type=int, default=256,
                    help="size of the array the neighbour streams through memory. Default: 256")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random variants. Default: 0")
    ap.add_argument("--cache", default=str(pa.DEFAULT_CACHE), help="latency-table cache (EDGEPRUNE_CACHE)")
    ap.add_argument("--table-limit-min", type=float, default=25.0, help="give up on a table build after this long")
    ap.add_argument("--out", default=None, help="write calibration_check.json and .md into this folder")
    ap.add_argument("--neighbour", type=int, default=None, help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()
    if args.neighbour is not None:
        return neighbour(args.neighbour)
    os.environ["EDGEPRUNE_CACHE"] = args.cache
    start = time.perf_counter()
    pa.log(f"== {args.target} {args.model}: latency table")
    table = pa.timed_table(args.target, args.model, args.table_limit_min * 60, args.cache)
    if not table["ok"]:
        pa.log(f"error: {table['why']}")
        return 1
    arms = {}
    for arm in ARMS:
        arms[arm] = calibrate_arm(arm, args.model, args.target, args.neighbour_mb)
    hs = arms["quiet, check"]["hs"]
    from edgeprune.measure.paired import measure_paired

    rng = np.random.default_rng(args.seed)
    variants = [pa.random_counts(rng, hs.widths, int(hs.profile["channel_multiple"]), 0.1)
                for _ in range(args.variants)]
    ones = [np.ones(w) for w in hs.widths]
    pa.log(f"   {len(variants)} random variants: compile, then {args.rounds} paired processes on the quiet machine")
    with tempfile.TemporaryDirectory(prefix="edgeprune-calcheck-") as tmp:
        arts = {"unpruned": pa.compile_model(hs, hs.model, Path(tmp) / "unpruned")}
        for i, counts in enumerate(variants):
            arts[f"v{i}"] = pa.compile_model(hs, hs.prune_counts(counts, ones), Path(tmp) / f"v{i}")
        res = measure_paired(arts, hs.settings, rounds=args.rounds, reference="unpruned")
    quiet_ms = res["unpruned"]["reference_quiet_ms"]
    ratios = [res[f"v{i}"]["ratio"] for i in range(len(variants))]
    rows = []
    for arm in ARMS:
        a = arms[arm]
        pred = [a["hs"].predictor.predict(c) for c in variants]
        rec = a["record"]
        rec["own_scale"] = pa.error_stats(pred, [r * rec["baseline_ms"] for r in ratios])
        rec["quiet_ms_scale"] = pa.error_stats(pred, [r * quiet_ms for r in ratios])
        rows.append(rec)
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv), "target": args.target,
           "model": args.model, "neighbour_mb": args.neighbour_mb, "variants": len(variants), "rounds": args.rounds,
           "quiet_unpruned_ms": quiet_ms, "variant_ratios": ratios, "arms": rows, "total_s": time.perf_counter() - start,
           "table_seconds": table["seconds"]}
    share = lambda st: f"{100 * st['within_10pct']:.0f}% / {st['median_abs_pct']:.1f}% (mean {st['mean_signed_pct']:+.1f}%)"
    lines = [f"{args.model} on {args.target}, neighbour streaming {args.neighbour_mb} MB; variants measured quiet: "
             f"unpruned {quiet_ms:.3f} ms", "",
             "| calibration | passes: unpruned ms (check ms) | kept baseline ms | calibrate s | variants within ±10% / "
             "median, on its own scale | on the quiet ms scale |", "|---|---|---|---|---|---|"]
    for r in rows:
        passes = ", ".join(f"{p['unpruned_ms']:.3f}" + (f" ({p['check_ms']:.3f})" if p["check_ms"] else "")
                           for p in r["passes"])
        lines.append(f"| {r['arm']} | {passes} | {r['baseline_ms']:.3f} | {r['seconds']:.0f} | "
                     f"{share(r['own_scale'])} | {share(r['quiet_ms_scale'])} |")
    write_results(args.out, "calibration_check", out, "\n".join(lines))
    return 0


def write_results(folder: str | None, stem: str, data: dict, text: str) -> None:
    """Print the table ``text``; with a ``folder``, also write ``stem``.json (``data``) and ``stem``.md there."""
    print(text)
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        (path / f"{stem}.json").write_text(json.dumps(data, indent=1))
        (path / f"{stem}.md").write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
