"""How well does the calibrated latency-table predictor match whole-model measurements?

Per target runtime and model: build the target's latency table for the model (timed, in a
child process so a table that takes too long can be abandoned), calibrate the predictor the
way the ``--budget-ms`` driver does (``HardwareSearch.calibrate``: the unpruned model plus
uniformly pruned and mixed variants, measured paired against the unpruned model, with its weight term and
measured per-group correction where leave-one-out error chooses them), then draw N random pruned variants
(every group's kept count drawn uniformly from the target's channel-multiple grid between
``min_keep`` and full width, seed fixed). Every variant is exported, compiled and measured
paired against the unpruned model with the calibration's models among them (``measure.paired``:
alternating bursts in one process, ``--rounds`` processes); a variant's figure is its median ratio to
the unpruned model times the calibration's baseline figure, as the search itself measures.

Reported per variant: predicted (calibrated), raw table sum (uncalibrated) and measured ms.
Side by side (``--calibrations``): the unpruned and uniform models with each kind of mixed calibration models
(``search.hardware.mixed_counts``: halves, random depths, every group random), all measured in the variants' paired
run and each fitted on that run's figures, so the sets differ only in which models they measured ("random-all" is
drawn like the variants, with another seed). ``--candidates`` adds a second test set: the allocations a
bench/hw_search.py run's search measured (what the predictor steers in practice, not random draws).
Per case: share of variants whose prediction is within +/-10% of the measurement, median
and max |error|, the same for the predictor calibrated on the same models without the weight term (side by
side: the predictor before session 26) and for the raw sum, the best a straight line through the raw sums
could do (fit on all variants, in-sample: separates the table's shape error from the
calibration's noise), table build time and points measured.

Models (``--models``): resnet20 (1x1x28x28), mobilenet_v2 (1x3x224x224), resnet18 (1x3x224x224),
mobilenet_v2_96 (1x1x96x96, the trained Fashion-MNIST size), resnet18_96 (1x1x96x96: the realistic trained model of
bench/RESULTS.md §5, about 4 ms on OpenVINO at 1 thread); untrained weights (latency only: an fp32 model's latency does
not depend on its weights).

``--refit RUN.json[,...]`` measures nothing: it refits the current predictor on each stored case's own calibration
measurements (the table read from the cache the run used) and scores it on the stored variants, so a change to the
predictor's fitting is judged on the same measurements as the figures it replaces; where the run measured them in the
variants' paired run (``--calibrations``), it also fits the calibration's mixed models of before session 38
("random") and of now (``hardware.CALIBRATION_MIXED_KIND``) on those figures, one column each (which models the
calibration measures, judged on one measurement). With ``--ablate`` it also refits
with parts of the fit switched off (``ABLATIONS``: the cuts correction, every correction, the weight term too), one
column each, to show which part helps or costs a case.

Usage: python bench/predictor_accuracy.py [--targets x86,arm64,arm64-mnn] [--models resnet20,mobilenet_v2]
           [--variants 30] [--rounds 3] [--table-limit-min 25] [--cache DIR] [--out bench/results]
           [--calibrations halves,random,random-all,random+random-all] [--candidates bench/results/.../hw_search.json]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

# bench name -> (zoo model, input shape)
CASES = {"resnet20": ("resnet20", (1, 1, 28, 28)), "mobilenet_v2": ("mobilenet_v2", (1, 3, 224, 224)),
         "resnet18": ("resnet18", (1, 3, 224, 224)), "mobilenet_v2_96": ("mobilenet_v2", (1, 1, 96, 96)),
         "resnet18_96": ("resnet18", (1, 1, 96, 96))}
PRECISION = "fp32"
THREADS = 1
REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(os.path.expanduser("~")) / ".cache" / "edgeprune" / "bench-lut"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def build_net(name: str):
    import torch

    from edgeprune.models import build_model

    torch.manual_seed(0)
    zoo, shape = CASES[name]
    return build_model(zoo, num_classes=10, in_channels=shape[1]).eval(), torch.zeros(*shape)


def table_only(target: str, model_name: str) -> int:
    """Child mode: build (or read from cache) the table; print {"seconds", "meta"} as JSON."""
    from edgeprune.measure.lut_build import build_table
    from edgeprune.profiles import load_profile
    from edgeprune.prune.graph import PruneGraph
    from edgeprune.search.plan import build_plan
    from edgeprune.search.units import plan_with_units

    model, example = build_net(model_name)
    graph = PruneGraph(model, example)
    start = time.perf_counter()
    build = lambda req: build_table(load_profile(target), req, precision=PRECISION, threads=THREADS)
    _, table = plan_with_units(model, build_plan(graph), [g.channels for g in graph.groups], build)
    print(json.dumps({"seconds": time.perf_counter() - start, "meta": table["meta"]}))
    return 0


def timed_table(target: str, model_name: str, limit_s: float, cache: str) -> dict:
    """Build the table in a child process (own session); kill the whole session past ``limit_s``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--table-only", "--targets", target, "--models", model_name,
           "--cache", cache]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True, cwd=REPO)
    try:
        out, _ = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate()
        return {"ok": False, "seconds": limit_s, "why": f"table not built within {limit_s / 60:.0f} min; skipped"}
    except BaseException:  # interrupted: do not leave the child's session measuring
        os.killpg(proc.pid, signal.SIGTERM)
        raise
    if proc.returncode != 0:
        return {"ok": False, "seconds": None, "why": f"table build failed (exit {proc.returncode})"}
    return {"ok": True, **json.loads(out.strip().splitlines()[-1])}


def random_counts(rng: np.random.Generator, widths: list[int], multiple: int, min_ratio: float) -> list[int]:
    from edgeprune.measure.lut import channel_grid
    from edgeprune.prune.select import min_keep

    counts = []
    for w in widths:
        floor = min_keep(w, multiple, min_ratio)
        options = [c for c in channel_grid(w, multiple) if c >= floor] or [w]
        counts.append(int(rng.choice(options)))
    return counts


def compile_model(hs, model, dest: Path) -> Path:
    """Export + compile exactly as ``HardwareSearch.measure_model`` does, but keep the artifact."""
    from edgeprune.export import export_onnx
    from edgeprune.targets import require_runtime

    mod = require_runtime(hs.profile["runtime"])
    onnx_path = export_onnx(model, tuple(hs.example.shape), dest / "m.onnx")["path"]
    return mod.compile(Path(onnx_path), hs.precision, hs.calib, hs.profile, dest / "art").path


def error_stats(pred: list[float], meas: list[float]) -> dict:
    err = [100.0 * (p - m) / m for p, m in zip(pred, meas)]
    worst = max(err, key=abs)
    return {"within_10pct": sum(abs(e) <= 10 for e in err) / len(err), "median_abs_pct": statistics.median(map(abs, err)),
            "max_abs_pct": abs(worst), "max_signed_pct": worst, "mean_signed_pct": statistics.fmean(err)}


def measure_variants(hs, variants: dict[str, list[int]], rounds: int) -> tuple[dict, float, float]:
    """Compile every variant (name -> counts; + 'cal0', 'cal1', ...: the calibration's models, 'cal0' the unpruned
    one) and measure them all paired against 'cal0' (``measure.paired``: alternating bursts in one process,
    ``rounds`` processes), on the calibration's scale (each figure is its ratio to the unpruned model times
    ``hs.baseline_ms``, as in the search); name -> result."""
    from edgeprune.measure.paired import measure_paired

    ones = [np.ones(w) for w in hs.widths]
    with tempfile.TemporaryDirectory(prefix="edgeprune-predacc-") as tmp:
        t0 = time.perf_counter()
        arts = {}
        for j, (counts, _) in enumerate(hs.samples):
            model = hs.model if counts == hs.widths else hs.prune_counts(counts, ones)
            arts[f"cal{j}"] = compile_model(hs, model, Path(tmp) / f"cal{j}")
        for i, (name, counts) in enumerate(variants.items()):
            log(f"      compiling variant {i + 1}/{len(variants)} ({name})")
            arts[name] = compile_model(hs, hs.prune_counts(counts, ones), Path(tmp) / name)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = measure_paired(arts, hs.settings, rounds=rounds, reference="cal0", reference_ms=hs.baseline_ms)
        return res, compile_s, time.perf_counter() - t0


def run_case(target: str, model_name: str, args) -> dict:
    from edgeprune.measure.protocol import MeasureSettings
    from edgeprune.profiles import load_profile
    from edgeprune.search.hardware import CALIBRATION_MIXED, HardwareSearch, mixed_counts

    profile = load_profile(target)
    case = {"target": target, "runtime": profile["runtime"], "model": model_name,
            "input_shape": list(CASES[model_name][1])}
    log(f"== {target} ({profile['runtime']}) {model_name}: latency table (limit {args.table_limit_min} min)")
    table = timed_table(target, model_name, args.table_limit_min * 60, args.cache)
    case["table"] = table
    if not table["ok"]:
        log(f"   {table['why']}")
        return case
    log(f"   table: {table['seconds']:.0f} s, {table['meta']['points_measured']} points measured, "
        f"{table['meta']['rows_from_cache']} rows from cache")
    model, example = build_net(model_name)
    settings = MeasureSettings(threads=THREADS, warmup_s=0.5, min_seconds=1.0)
    t0 = time.perf_counter()
    hs = HardwareSearch(model, example, profile, PRECISION, THREADS, settings, progress=False)
    case["setup_s"] = time.perf_counter() - t0
    log(f"   search set up in {case['setup_s']:.1f} s ({hs.table['meta']['rows_from_cache']} table rows from cache); "
        "calibrating (HardwareSearch.calibrate: unpruned + uniform and mixed variants, paired)")
    t0 = time.perf_counter()
    fit = hs.calibrate()
    case["calibrate_s"] = time.perf_counter() - t0
    case["calibration"] = {**fit, "measured": [{"counts": c, "ms": m} for c, m in hs.samples]}
    log(f"   calibrated in {case['calibrate_s']:.0f} s: " + ", ".join(f"{m:.3f}" for _, m in hs.samples) + " ms")
    multiple = int(profile["channel_multiple"])
    rng = np.random.default_rng(args.seed)
    variants = [random_counts(rng, hs.widths, multiple, 0.1) for _ in range(args.variants)]
    named = {f"v{i}": c for i, c in enumerate(variants)}
    # side by side: other calibration sets (the same unpruned and uniform models, other mixed models), measured in
    # the same paired run as the variants, so every calibration below is fitted on figures of one measurement
    measured_cal = [c for c, _ in hs.samples]
    base_cal = [m["counts"] for name, m in hs.calibration["models"].items() if not name.startswith("mixed-")]
    alt_sets = {}
    for kind in [k for k in args.calibrations.split(",") if k]:
        counts_list = list(base_cal)
        for i, c in enumerate(mixed_counts(hs.widths, hs.multiples, CALIBRATION_MIXED, kind)):
            if c not in counts_list:
                counts_list.append(c)
                if c not in measured_cal and c not in named.values():  # measure each model once
                    named[f"alt-{kind}-{i}"] = c
        alt_sets[kind] = counts_list
    candidates = load_candidates(args.candidates, hs.widths, args.candidates_max, args.seed) if args.candidates else []
    named.update({f"cand{i}": c for i, c in enumerate(candidates)})
    log(f"   {len(variants)} random variants, {len(candidates)} search candidates, "
        f"{len(named) - len(variants) - len(candidates)} other calibration models: compile, then {args.rounds} "
        "paired processes")
    res, compile_s, measure_s = measure_variants(hs, named, args.rounds)
    rows = []
    for i, counts in enumerate(variants):
        r = res[f"v{i}"]
        rows.append({"counts": counts, "channels": sum(counts), "predicted_ms": hs.predictor.predict(counts),
                     "raw_ms": hs.predictor.raw_ms(counts), "measured_ms": r["p50_ms"], "ratio": r["ratio"],
                     "ratio_interval": r["ratio_interval"], "spread": r["burst_spread"]})
    meas = [r["measured_ms"] for r in rows]
    raw = [r["raw_ms"] for r in rows]
    # side by side: the same calibration fitted without the weight term (the predictor before session 26)
    no_weights = copy.copy(hs.predictor)
    no_weights.weight_layers = None
    no_weights.calibrate(hs.samples)
    a, b = np.polyfit(raw, meas, 1)
    # the same calibration models, but fitted on their figures from this paired measurement
    cal_raw = [hs.predictor.raw_ms(c) for c, _ in hs.samples]
    cal_meas = [res[f"cal{j}"]["p50_ms"] for j in range(len(hs.samples))]
    ia, ib = np.polyfit(cal_raw, cal_meas, 1)
    figure = {}  # counts -> this run's paired figure
    for j, (c, _) in enumerate(hs.samples):
        figure[tuple(c)] = res[f"cal{j}"]["p50_ms"]
    for name, c in named.items():
        figure.setdefault(tuple(c), res[name]["p50_ms"])
    cand_meas = [res[f"cand{i}"]["p50_ms"] for i in range(len(candidates))]
    side = {}
    for kind, counts_list in alt_sets.items():
        pred = copy.copy(hs.predictor)
        fit = pred.calibrate([(c, figure[tuple(c)]) for c in counts_list])
        side[kind] = {"models": len(counts_list), "measured": [{"counts": c, "ms": figure[tuple(c)]} for c in counts_list],
                      "weight_ms_per_million": fit["weight_ms_per_million"],
                      "correction": fit["correction"],
                      "variants": error_stats([pred.predict(c) for c in variants], meas)}
        if candidates:
            side[kind]["candidates"] = error_stats([pred.predict(c) for c in candidates], cand_meas)
    if candidates:
        case["candidates"] = {"source": args.candidates, "rows": [
            {"counts": c, "predicted_ms": hs.predictor.predict(c), "measured_ms": m} for c, m in zip(candidates, cand_meas)],
            "calibrated": error_stats([hs.predictor.predict(c) for c in candidates], cand_meas),
            "no_weight_term": error_stats([no_weights.predict(c) for c in candidates], cand_meas)}
    case["calibration_sets"] = side
    case.update({
        "widths": hs.widths, "channel_multiple": multiple, "variants": rows, "compile_s": compile_s,
        "measure_s": measure_s, "baseline": {"calibration_ms": hs.baseline_ms,
                                             "quiet_ms": res["cal0"]["reference_quiet_ms"],
                                             "predicted_ms": hs.predictor.predict(hs.widths),
                                             "calibration_paired_ms": cal_meas},
        "calibrated": error_stats([r["predicted_ms"] for r in rows], meas),
        "raw_sum": error_stats(raw, meas),
        "no_weight_term": error_stats([no_weights.predict(r["counts"]) for r in rows], meas),
        "interleaved_calibration": {"scale": float(ia), "offset_ms": float(ib), **error_stats([ia * x + ib for x in raw], meas)},
        "best_line": {"scale": float(a), "offset_ms": float(b), **error_stats([a * x + b for x in raw], meas)},
        "noise_median_spread": statistics.median(r["spread"] for r in rows),
        "load_avg": os.getloadavg(),
        "measured_range_ms": [min(meas), max(meas)]})
    log(f"   calibrated: {100 * case['calibrated']['within_10pct']:.0f}% within 10%, "
        f"median |err| {case['calibrated']['median_abs_pct']:.1f}%")
    for kind, r in side.items():
        log(f"   calibration set '{kind}' (same paired run): variants {100 * r['variants']['within_10pct']:.0f}% / "
            f"{r['variants']['median_abs_pct']:.1f}%" + (f", candidates {100 * r['candidates']['within_10pct']:.0f}% / "
                                                         f"{r['candidates']['median_abs_pct']:.1f}%" if candidates else ""))
    return case


def load_candidates(paths: str, widths: list[int], limit: int, seed: int) -> list[list[int]]:
    """The distinct allocations (kept counts per group) of bench/hw_search.py results' search candidates (paths
    comma-separated) whose group count and widths fit ``widths``: a second test set, shaped like what the search
    measures; at most ``limit`` of them, drawn with ``seed`` when there are more."""
    out: list[list[int]] = []
    for path in paths.split(","):
        _collect_candidates(json.loads(Path(path).read_text()), widths, out)
    if len(out) > limit:
        keep = sorted(np.random.default_rng(seed).choice(len(out), size=limit, replace=False))
        out = [out[i] for i in keep]
    return out


def _collect_candidates(data: dict, widths: list[int], out: list[list[int]]) -> None:
    for case in data.get("cases", []):
        for row in case.get("rows", []):
            for cand in row.get("candidates") or []:
                c = cand.get("counts")
                if c and len(c) == len(widths) and all(0 < k <= w for k, w in zip(c, widths)) and c not in out \
                        and c != widths:
                    out.append([int(k) for k in c])


def pct(x: float) -> str:
    return f"{x:+.1f}%"


def summary_table(cases: list[dict]) -> str:
    head = ("| target (runtime) | model | table build | points measured | variants | measured range ms | "
            "calibrated: within ±10% | median abs err | max err | "
            "without the weight term: within ±10% / median | "
            "raw sum: within ±10% | median abs err | max err | "
            "calibration models' line from the same paired measurement: within ±10% / median | "
            "best line (in-sample): within ±10% / median | noise (median max/min of a variant's bursts) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for c in cases:
        tag = f"{c['target']} ({c['runtime']})"
        if not c["table"]["ok"]:
            lines.append(f"| {tag} | {c['model']} | {c['table']['why']} |" + " — |" * 13)
            continue
        cal, raw, best, inter = c["calibrated"], c["raw_sum"], c["best_line"], c["interleaved_calibration"]
        lo, hi = c["measured_range_ms"]
        nw = c.get("no_weight_term")  # runs before session 26 had no weight term
        nw = f"{100 * nw['within_10pct']:.0f}% / {nw['median_abs_pct']:.1f}%" if nw else "—"
        lines.append(
            f"| {tag} | {c['model']} | {c['table']['seconds']:.0f} s | {c['table']['meta']['points_measured']} | "
            f"{len(c['variants'])} | {lo:.3f}–{hi:.3f} | {100 * cal['within_10pct']:.0f}% | "
            f"{cal['median_abs_pct']:.1f}% | {pct(cal['max_signed_pct'])} | {nw} | {100 * raw['within_10pct']:.0f}% | "
            f"{raw['median_abs_pct']:.1f}% | {pct(raw['max_signed_pct'])} | "
            f"{100 * inter['within_10pct']:.0f}% / {inter['median_abs_pct']:.1f}% | "
            f"{100 * best['within_10pct']:.0f}% / {best['median_abs_pct']:.1f}% | {c['noise_median_spread']:.2f}x |")
    return "\n".join(lines)


def calibration_sets_table(cases: list[dict]) -> str:
    """The calibration sets fitted side by side on one paired run: share within ±10% / median |error|."""
    lines = ["| target (runtime) | model | calibration's mixed models | models | weight term ms/M | correction | "
             "random variants: within ±10% / median | search candidates: within ±10% / median |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cases:
        for kind, r in (c.get("calibration_sets") or {}).items():
            v, cand = r["variants"], r.get("candidates")
            corr = r["correction"]
            lines.append(f"| {c['target']} ({c['runtime']}) | {c['model']} | {kind} | {r['models']} | "
                         f"{r['weight_ms_per_million']:.3f} | {'alpha ' + format(corr['alpha'], 'g') if corr else 'none'} | "
                         f"{100 * v['within_10pct']:.0f}% / {v['median_abs_pct']:.1f}% | "
                         + (f"{100 * cand['within_10pct']:.0f}% / {cand['median_abs_pct']:.1f}% |" if cand else "— |"))
    return "\n".join(lines) if len(lines) > 2 else ""


def detail_table(c: dict) -> str:
    fit = c["calibration"]
    base = c["baseline"]
    lines = [f"#### {c['target']} ({c['runtime']}), {c['model']} {c['input_shape']}, channel multiple "
             f"{c['channel_multiple']}, widths {c['widths']}",
             "",
             f"Calibration (driver's `calibrate()`): scale {fit['scale']:.3f}, offset {fit['offset_ms']:+.3f} ms, "
             f"weight term {fit.get('weight_ms_per_million', 0.0):.4f} ms per million weights, from "
             + ", ".join(f"{s['ms']:.3f} ms" for s in fit["measured"]) + " (unpruned, uniform and mixed variants, "
             f"paired measurement). Unpruned model: {base['calibration_ms']:.3f} ms at calibration (every figure below "
             f"is a ratio to it, measured paired, times this), {base['quiet_ms']:.3f} ms quiet-phase p50 in the "
             f"variants' measurement, predicted {base['predicted_ms']:.3f} ms. "
             f"Calibration models re-measured with the variants: "
             f"{', '.join(f'{x:.3f}' for x in base['calibration_paired_ms'])} ms; the line through these: scale "
             f"{c['interleaved_calibration']['scale']:.3f}, offset {c['interleaved_calibration']['offset_ms']:+.3f} ms.",
             "",
             "| # | kept channels per group | predicted ms | raw sum ms | measured ms (ratio interval) | error | raw error |",
             "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(c["variants"]):
        m = r["measured_ms"]
        iv = r.get("ratio_interval") or (float("nan"), float("nan"))
        lines.append(f"| {i} | {r['counts']} | {r['predicted_ms']:.3f} | {r['raw_ms']:.3f} | {m:.3f} "
                     f"({iv[0]:.3f}-{iv[1]:.3f}x) | {pct(100 * (r['predicted_ms'] - m) / m)} | "
                     f"{pct(100 * (r['raw_ms'] - m) / m)} |")
    return "\n".join(lines)


class TableNotCached(RuntimeError):
    pass


def cached_search(case: dict):
    """The ``HardwareSearch`` of a stored case (its model, target and table), its table read from the cache the
    run used and never measured: a missing row raises ``TableNotCached``, so the raw sums are the run's."""
    import edgeprune.measure.lut_build as lut_build
    from edgeprune.measure.protocol import MeasureSettings
    from edgeprune.profiles import load_profile
    from edgeprune.search.hardware import HardwareSearch

    def cache_only(*_a, **_k):
        raise TableNotCached(f"{case['target']} {case['model']}: a table row is not in the cache "
                             "(run on the machine and --cache of the original run)")

    measure_row, lut_build._measure_row = lut_build._measure_row, cache_only
    try:
        model, example = build_net(case["model"])
        return HardwareSearch(model, example, load_profile(case["target"]), PRECISION, THREADS,
                              MeasureSettings(threads=THREADS), progress=False)
    finally:
        lut_build._measure_row = measure_row


PREVIOUS_MIXED_KIND = "random"  # the calibration's mixed models before session 38 (``--refit``'s paired columns)


def paired_kinds() -> list[str]:
    """``--refit``'s paired columns: the calibration's mixed kind before session 38 and the current one."""
    from edgeprune.search.hardware import CALIBRATION_MIXED_KIND

    return list(dict.fromkeys([PREVIOUS_MIXED_KIND, CALIBRATION_MIXED_KIND]))

# ``--ablate``: parts of the predictor's fit switched off, by the module constants that gate them
# (``edgeprune.measure.predictor``): name -> the module -> {constant: value while refitting}.
ABLATIONS = {
    "no cuts correction": lambda m: {"CORRECTIONS": {k: v for k, v in m.CORRECTIONS.items() if k != "cuts"}},
    "no correction": lambda m: {"RESIDUAL_MIN_SAMPLES": 10 ** 9},
    "no correction, no weight term": lambda m: {"RESIDUAL_MIN_SAMPLES": 10 ** 9, "WEIGHT_MIN_SAMPLES": 10 ** 9},
}


def refit_case(case: dict, ablate: bool = False) -> dict:
    """The current predictor refitted on a stored case's own measurements: the driver's calibration models
    (``calibration.measured``) fit it, the stored random variants test it (the table from the cache:
    ``cached_search``). ``ablate``: also refitted under each of ``ABLATIONS`` (``ablations``: name -> figures)."""
    import edgeprune.measure.predictor as predictor_module

    hs = cached_search(case)
    samples = [(m["counts"], m["ms"]) for m in case["calibration"]["measured"]]
    variants = case["variants"]
    meas = [v["measured_ms"] for v in variants]
    ablations = {}
    for name, switch in (ABLATIONS if ablate else {}).items():
        with mock.patch.multiple(predictor_module, **switch(predictor_module)):
            fit = hs.predictor.calibrate(samples)
            ablations[name] = {**error_stats([hs.predictor.predict(v["counts"]) for v in variants], meas),
                               "weight_ms_per_million": fit["weight_ms_per_million"],
                               "correction": fit["correction"]}
    # the calibration kinds before session 38 and now, fitted on the models of each that the run measured in the
    # variants' paired run (``calibration_sets``): which models to measure, judged on one measurement
    paired = {}
    for name in paired_kinds():
        parts = name.split("+")
        if not all(part in case.get("calibration_sets", {}) for part in parts):
            continue
        drawn = {tuple(m["counts"]): (m["counts"], m["ms"]) for part in parts
                 for m in case["calibration_sets"][part]["measured"]}
        fit = hs.predictor.calibrate(list(drawn.values()))
        paired[name] = {**error_stats([hs.predictor.predict(v["counts"]) for v in variants], meas),
                        "models": len(drawn), "correction": fit["correction"],
                        "weight_ms_per_million": fit["weight_ms_per_million"]}
    fit = hs.predictor.calibrate(samples)
    return {"target": case["target"], "runtime": case["runtime"], "model": case["model"],
            "stored": case["calibrated"], "refit": error_stats([hs.predictor.predict(v["counts"]) for v in variants], meas),
            "correction": fit["correction"], "weight_ms_per_million": fit["weight_ms_per_million"],
            "ablations": ablations, "paired": paired}


def refit(paths: str, ablate: bool = False) -> int:
    """``--refit``: print the stored and the refitted predictor's figures side by side, one row per case (with
    ``ablate``, one more column per ``ABLATIONS`` entry)."""
    share = lambda st: f"{100 * st['within_10pct']:.0f}% / {st['median_abs_pct']:.1f}%"
    fit_of = lambda r: ((f"{r['correction']['features']}, alpha {r['correction']['alpha']:g}" if r["correction"]
                         else "none") + (", weight term" if r["weight_ms_per_million"] else ""))
    extra = list(ABLATIONS) if ablate else []
    kinds = paired_kinds()
    lines = ["| target (runtime) | model | run | stored: within ±10% / median | refitted: within ±10% / median | "
             "refitted correction |" + "".join(f" {name} |" for name in extra)
             + "".join(f" paired run, '{k}' models |" for k in kinds),
             "|---|---|---|---|---|---|" + "---|" * (len(extra) + len(kinds))]
    paired_cell = lambda r, k: (f" {r['paired'][k]['models']}: {share(r['paired'][k])} ({fit_of(r['paired'][k])}) |"
                                if k in r["paired"] else " — (not measured in this run) |")
    for path in [p for p in paths.split(",") if p]:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            log(f"error: cannot read {path} ({exc}); pass a predictor_accuracy.json this script wrote")
            return 2
        for case in data.get("cases", []):
            if not case["table"]["ok"]:
                continue
            try:
                r = refit_case(case, ablate)
            except TableNotCached as exc:
                log(f"skipped: {exc}")
                lines.append(f"| {case['target']} ({case['runtime']}) | {case['model']} | {path} | "
                             f"{share(case['calibrated'])} | — (table not in this cache) | |" + " |" * (len(extra) + len(kinds)))
                continue
            lines.append(f"| {r['target']} ({r['runtime']}) | {r['model']} | {path} | "
                         f"{share(r['stored'])} | {share(r['refit'])} | {fit_of(r)} |"
                         + "".join(f" {share(r['ablations'][n])} ({fit_of(r['ablations'][n])}) |" for n in extra)
                         + "".join(paired_cell(r, k) for k in kinds))
    print("\n".join(lines))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="x86,arm64",
                    help="target profiles, comma-separated (x86: OpenVINO, arm64: ncnn, arm64-mnn: MNN)")
    ap.add_argument("--models", default="resnet20,mobilenet_v2",
                    help=f"models and input shapes, comma-separated (one of: {', '.join(CASES)})")
    ap.add_argument("--variants", type=int, default=30, help="random pruned variants measured per model and target")
    ap.add_argument("--rounds", type=int, default=3, help="paired measurement rounds per variant")
    ap.add_argument("--seed", type=int, default=0, help="seed of the variants' random channel counts")
    ap.add_argument("--table-limit-min", type=float, default=25.0,
                    help="give up on a latency table that takes longer than this many minutes")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE), help="latency-table cache (EDGEPRUNE_CACHE)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"),
                    help="folder for predictor_accuracy.json and predictor_accuracy-tables.md")
    ap.add_argument("--calibrations", default="halves,random,random-all,random+random-all",
                    help="mixed calibration sets to fit side by side on the variants' paired run (search.hardware."
                         "mixed_counts kinds; empty: none)")
    ap.add_argument("--candidates", default=None,
                    help="a bench/hw_search.py result (hw_search.json): its search candidates' allocations are measured "
                         "as a second test set (several: comma-separated)")
    ap.add_argument("--candidates-max", type=int, default=30, help="at most this many candidates (a seeded draw)")
    ap.add_argument("--refit", default=None, metavar="JSON[,JSON]",
                    help="measure nothing: refit the current predictor on stored runs' own calibration measurements "
                         "(their tables read from --cache) and print their variants' figures, stored and refitted")
    ap.add_argument("--ablate", action="store_true",
                    help="with --refit: also refit with the cuts correction, every correction, and the weight term "
                         "too switched off, one column each")
    ap.add_argument("--table-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ["EDGEPRUNE_CACHE"] = args.cache
    if args.ablate and not args.refit:
        ap.error("--ablate goes with --refit RUN.json (it refits stored runs and measures nothing)")
    if args.refit:
        return refit(args.refit, args.ablate)
    if args.table_only:
        return table_only(args.targets, args.models)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a table child's session is ended too
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for m in args.models.split(","):
        for t in args.targets.split(","):
            cases.append(run_case(t, m, args))
            result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
                      "threads": THREADS, "precision": PRECISION, "seed": args.seed, "rounds": args.rounds,
                      "total_s": time.perf_counter() - started, "cases": cases}
            (out / "predictor_accuracy.json").write_text(json.dumps(result, indent=1))  # after every case
    sets = calibration_sets_table(cases)
    text = summary_table(cases) + ("\n\nCalibration sets fitted side by side on the variants' paired run:\n\n" + sets
                                   if sets else "") + "\n\n" + "\n\n".join(detail_table(c) for c in cases if c["table"]["ok"])
    print(text)
    (out / "predictor_accuracy-tables.md").write_text(text + "\n")
    log(f"wrote {out / 'predictor_accuracy.json'} ({result['total_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
