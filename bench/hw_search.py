"""Hardware-aware search vs uniform L1 vs FLOPs-targeted Torch-Pruning, at equal latency budgets.

ResNet-20 on Fashion-MNIST (1x1x28x28), fp32, 1 thread. Per target (x86 = OpenVINO, arm64 = ncnn on
this x86 host) and budget (a share of the unpruned model's p50, median of 3 fresh runs), four candidates:
- hw: ``HardwareSearch.search`` (L1 scores), checked by measurement and retried like the ``--budget-ms``
  driver (a miss is fed back and the search aims lower; at most 3 attempts); every budget starts
  from the same two-point calibration.
- uniform: every group loses the same share (``select.uniform_counts``, target's channel multiple, L1
  channels kept); the share is swept, every distinct model measured (2 interleaved rounds, min), and
  the least-pruned one within budget taken (the fastest one if none is).
- tp / tp-round: Torch-Pruning's ``MagnitudePruner(global_pruning=True, GroupMagnitudeImportance(p=1),
  ignored_layers=[fc])`` without / with ``round_to=channel multiple``, ``pruning_ratio`` picked so the
  MACs drop by the same share as the hw model's (nearest MACs ratio).
Then the unpruned model and all candidates of a target are measured interleaved in rounds, each run
a fresh process; a model's figure is its median round's p50. Predicted p50: the two-point calibrated
predictor (off-grid counts interpolated; counts below the table's range: none). The FLOPs-targeted
models' "predicted speed-up" is 1 / MACs ratio. Top-1 on the full 10k test set, right after pruning
and after the same short fine-tune for every model (``--ft-epochs``, SGD ``--ft-lr``, cosine, no aug.).

Usage: python bench/hw_search.py [--weights CKPT | --train-only] [--targets x86,arm64]
           [--budgets 0.7,0.5,0.35] [--ft-epochs 0.25] [--ft-budgets all|none|0.5,...] [--rounds 3]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
SHAPE = (1, 1, 28, 28)
THREADS, PRECISION = 1, "fp32"
DEFAULT_CACHE = Path(os.path.expanduser("~")) / ".cache" / "edgeprune" / "bench-lut"
DEFAULT_WEIGHTS = Path(os.path.expanduser("~")) / ".cache" / "edgeprune" / "bench-weights" / "resnet20-fmnist.pt"
TP_COARSE = [float(round(r, 3)) for r in np.arange(0.02, 0.951, 0.04)]
UNIFORM_RATIOS = [float(round(r, 3)) for r in np.arange(0.05, 0.951, 0.025)]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def baseline(args, train_ds, test_ds) -> tuple[torch.nn.Module, dict]:
    """The trained ResNet-20: ``--weights`` if given, else trained now (1 epoch) and saved for reuse."""
    from edgeprune.loading import load_model
    from edgeprune.models import model_spec
    from edgeprune.models.checkpoint import save_checkpoint
    from edgeprune.train import evaluate, train

    info = {}
    if args.weights:
        model, _ = load_model("resnet20", args.weights, num_classes=10, in_channels=1)
        info["weights"] = args.weights
    else:
        model, _ = load_model("resnet20", None, num_classes=10, in_channels=1)
        torch.manual_seed(0)
        hist = train(model, train_ds, epochs=1, lr=0.05, augment=False, seed=0, desc="baseline")
        Path(args.save_weights).parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(args.save_weights, model, model_spec("resnet20", 10, 1), {"epochs": 1, "lr": 0.05})
        info.update({"trained_s": hist["seconds"], "weights": args.save_weights})
        log(f"baseline trained in {hist['seconds'] / 60:.1f} min, saved to {args.save_weights}")
    info["top1"] = evaluate(model.eval(), test_ds, progress=False)
    log(f"baseline top-1 {100 * info['top1']:.2f}%")
    return model.eval(), info


def tp_prune(model, example, ratio: float, round_to: int | None):
    import torch_pruning as tp

    m = copy.deepcopy(model).eval()
    pruner = tp.pruner.MagnitudePruner(m, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                       global_pruning=True, pruning_ratio=ratio, ignored_layers=[m.fc],
                                       round_to=round_to)
    pruner.step()
    return m


class TPSweep:
    """MACs ratio of Torch-Pruning's global pruning by ``pruning_ratio`` (memoised). With ``round_to`` it is
    not monotone in the ratio, so ``nearest`` scans a coarse grid, then refines around the best point."""

    def __init__(self, model, example, round_to: int | None, base_macs: int):
        self.model, self.example, self.round_to, self.base_macs = model, example, round_to, base_macs
        self.memo: dict[float, float] = {}

    def macs_ratio(self, r: float) -> float:
        from edgeprune.loading import count_flops_params

        r = round(r, 3)
        if r not in self.memo:
            self.memo[r] = count_flops_params(tp_prune(self.model, self.example, r, self.round_to), SHAPE)[0] / self.base_macs
        return self.memo[r]

    def nearest(self, target: float) -> tuple[float, float]:
        best = min(TP_COARSE, key=lambda r: abs(self.macs_ratio(r) - target))
        fine = [best + d / 100 for d in range(-3, 4) if 0 < best + d / 100 < 1]
        r = min(fine, key=lambda r: abs(self.macs_ratio(r) - target))
        return float(round(r, 3)), self.macs_ratio(r)


def group_counts(hs, model) -> list[int]:
    """Kept channels of each of ``hs``'s groups in a pruned model (its root layer's out-channels)."""
    mods = dict(model.named_modules())
    return [mods[g.root_name].out_channels if hasattr(mods[g.root_name], "out_channels")
            else mods[g.root_name].out_features for g in hs.graph.groups]


def predict(hs, counts) -> float | None:
    try:
        return hs.predictor.predict(counts)
    except KeyError:  # a count below the table's smallest measured width (off the channel grid)
        return None


def hw_candidate(hs, ctx, budget_ms: float, attempts: int = 3) -> tuple[torch.nn.Module, list[int], list[dict]]:
    """The driver's loop: search by prediction, measure, feed a miss back and aim lower.

    Unlike the driver (which then raises), a later attempt whose aim is unreachable by prediction ends the
    loop and the last measured attempt is kept (marked over budget), so the budget is still compared."""
    from edgeprune.search.budget import BudgetError

    calibrated = list(hs.samples)
    tries, target = [], budget_ms
    try:
        for attempt in range(1, attempts + 1):
            try:
                result, found = hs.search(ctx, "l1", target)
            except BudgetError as exc:  # the fed-back predictor says the tightened aim is out of reach
                if attempt == 1:
                    raise
                tries.append({"attempt": attempt, "aimed_ms": target, "gave_up": str(exc)})
                log(f"      hw attempt {attempt}: gave up ({exc}); keeping attempt {attempt - 1}")
                break
            measured = hs.measure_model(result.model)
            tries.append({"attempt": attempt, "aimed_ms": target, "predicted_ms": found.predicted_ms,
                          "measured_ms": measured, "counts": found.counts})
            log(f"      hw attempt {attempt}: aimed {target:.3f} ms, predicted {found.predicted_ms:.3f}, "
                f"measured {measured:.3f} (budget {budget_ms:.3f})")
            if measured <= budget_ms:
                break
            hs.add_measurement(found.counts, measured)
            target = min(target, found.predicted_ms) * budget_ms / measured * 0.99
    finally:  # every budget starts from the same two-point calibration
        hs.samples = calibrated
        hs.predictor.calibrate(calibrated)
    return result.model, found.counts, tries


def compile_model(hs, model, dest: Path) -> Path:
    """Export + compile exactly as ``HardwareSearch.measure_model`` does, keeping the artifact."""
    from edgeprune.export import export_onnx
    from edgeprune.targets import require_runtime

    mod = require_runtime(hs.profile["runtime"])
    onnx_path = export_onnx(model, SHAPE, dest / "m.onnx")["path"]
    return mod.compile(Path(onnx_path), hs.precision, hs.calib, hs.profile, dest / "art").path


def uniform_sweep(hs, scores, tmp: Path) -> list[dict]:
    """Every distinct uniform-L1 model over ``UNIFORM_RATIOS``, compiled and measured (2 interleaved rounds)."""
    from edgeprune.measure.protocol import measure_interleaved
    from edgeprune.prune.select import uniform_counts

    multiple = int(hs.profile["channel_multiple"])
    seen: dict[tuple, dict] = {}
    for r in UNIFORM_RATIOS:
        counts = uniform_counts(hs.widths, r, multiple)
        if tuple(counts) != tuple(hs.widths) and tuple(counts) not in seen:
            seen[tuple(counts)] = {"ratio": r, "counts": counts}
    arts = {}
    for i, c in enumerate(seen.values()):
        c["artifact"] = str(compile_model(hs, hs.prune_counts(c["counts"], scores), tmp / f"u{i}"))
        arts[f"u{i}"] = c["artifact"]
    log(f"   uniform sweep: {len(arts)} distinct models, 2 interleaved rounds")
    res = measure_interleaved(arts, hs.settings, rounds=2, progress=True)
    for i, c in enumerate(seen.values()):
        c["sweep_ms"] = res[f"u{i}"]["latency"]["p50_ms"]
    return list(seen.values())


def pick_uniform(sweep: list[dict], budget_ms: float) -> dict:
    ok = [c for c in sweep if c["sweep_ms"] <= budget_ms]
    if ok:
        return max(ok, key=lambda c: sum(c["counts"]))
    return min(sweep, key=lambda c: c["sweep_ms"])




def make_candidates(hs, model, example, scores, budgets, tp_sweeps, base_macs, anchor_ms: float,
                    tmp: Path) -> dict[str, dict]:
    from edgeprune.loading import count_flops_params
    from edgeprune.prune.base import PruneContext
    from edgeprune.search.budget import BudgetError

    ctx = PruneContext(example_inputs=example, progress=False, options={"method": "l1"})
    multiple = int(hs.profile["channel_multiple"])
    sweep = uniform_sweep(hs, scores, tmp)
    cands: dict[str, dict] = {}
    for b in budgets:
        budget_ms = b * anchor_ms
        log(f"   budget {b}x = {budget_ms:.3f} ms")
        try:
            hw_model, counts, tries = hw_candidate(hs, ctx, budget_ms)
        except BudgetError as exc:  # below the fastest model the search reaches: no comparison at this budget
            log(f"   budget {b}x skipped: {exc}")
            continue
        macs_ratio = count_flops_params(hw_model, SHAPE)[0] / base_macs
        cands[f"hw@{b}"] = {"method": "hw", "budget": b, "budget_ms": budget_ms, "model": hw_model,
                            "key": ("l1", tuple(counts)), "attempts": tries, "macs_ratio": macs_ratio}
        u = pick_uniform(sweep, budget_ms)
        u_model = hs.prune_counts(u["counts"], scores)
        cands[f"uniform@{b}"] = {"method": "uniform", "budget": b, "budget_ms": budget_ms, "model": u_model,
                                 "key": ("l1", tuple(u["counts"])), "artifact": u["artifact"],
                                 "ratio": u["ratio"], "sweep_ms": u["sweep_ms"],
                                 "macs_ratio": count_flops_params(u_model, SHAPE)[0] / base_macs}
        for label, rt in (("tp", None), ("tp-round", multiple)):
            r, mr = tp_sweeps[rt].nearest(macs_ratio)
            cands[f"{label}@{b}"] = {"method": label, "budget": b, "budget_ms": budget_ms, "ratio": r,
                                     "round_to": rt, "model": tp_prune(model, example, r, rt),
                                     "key": ("tp", r, rt), "macs_ratio": mr}
    return cands


def measure_candidates(hs, cands: dict[str, dict], rounds: int, base_art: Path, tmp: Path) -> dict:
    from edgeprune.measure.protocol import measure_interleaved

    arts = {"base": base_art}
    for name, c in cands.items():
        arts[name] = c.get("artifact") or compile_model(hs, c["model"], tmp / name.replace("@", "_"))
    log(f"   final: {len(arts)} models x {rounds} interleaved rounds")
    return measure_interleaved(arts, hs.settings, rounds=rounds, progress=True)


def fill_rows(hs, cands: dict[str, dict], res: dict) -> list[dict]:
    base_ms = res["base"]["latency"]["p50_ms"]
    base_pred = hs.predictor.predict(hs.widths)
    rows = []
    for name, c in cands.items():
        counts = group_counts(hs, c["model"])
        pred = predict(hs, counts)
        ms = res[name]["latency"]["p50_ms"]
        flops_based = c["method"].startswith("tp")
        pred_speedup = 1 / c["macs_ratio"] if flops_based else (base_pred / pred if pred else None)
        rows.append({**{k: v for k, v in c.items() if k not in ("model", "key", "artifact")}, "name": name, "counts": counts,
                     "measured_ms": ms, "rounds_ms": res[name]["rounds"], "within_budget": ms <= c["budget_ms"],
                     "predicted_ms": pred, "table_speedup": base_pred / pred if pred else None,
                     "measured_speedup": base_ms / ms, "predicted_speedup": pred_speedup,
                     "speedup_error_pct": 100 * (pred_speedup / (base_ms / ms) - 1) if pred_speedup else None})
    return rows


def run_target(target: str, model, example, scores, tp_sweeps, base_macs, args) -> dict:
    from edgeprune.measure.protocol import MeasureSettings, measure_interleaved
    from edgeprune.profiles import load_profile
    from edgeprune.search.hardware import HardwareSearch

    profile = load_profile(target)
    log(f"== {target} ({profile['runtime']})")
    settings = MeasureSettings(threads=THREADS, warmup_s=0.5, min_seconds=1.0)
    t0 = time.perf_counter()
    hs = HardwareSearch(model, example, profile, PRECISION, THREADS, settings, progress=True)
    table_s = time.perf_counter() - t0
    fit = hs.calibrate()
    log(f"   table {table_s:.0f} s ({hs.table['meta']['rows_from_cache']} rows cached); baseline "
        f"{hs.baseline_ms:.3f} ms; fit scale {fit['scale']:.2f} offset {fit['offset_ms']:+.3f}")
    with tempfile.TemporaryDirectory(prefix="edgeprune-hwsearch-") as tmp:
        # budgets are shares of a robust baseline: median of 3 more fresh-process runs (calibration's one run is noisy)
        base_art = compile_model(hs, hs.model, Path(tmp) / "base")
        anchor = measure_interleaved({"base": base_art}, settings, rounds=3, progress=False)["base"]
        log(f"   budget anchor: unpruned p50 {anchor['p50_ms_median']:.3f} ms (median of {anchor['rounds']})")
        cands = make_candidates(hs, model, example, scores, args.budget_list, tp_sweeps, base_macs,
                                anchor["p50_ms_median"], Path(tmp))
        res = measure_candidates(hs, cands, args.rounds, base_art, Path(tmp))
    rows = fill_rows(hs, cands, res)
    return {"target": target, "runtime": profile["runtime"], "channel_multiple": profile["channel_multiple"],
            "table_s": table_s, "table_meta": hs.table["meta"], "calibration": fit, "widths": hs.widths,
            "baseline_calibration_ms": hs.baseline_ms, "budget_anchor_ms": anchor["p50_ms_median"],
            "budget_anchor_rounds_ms": anchor["rounds"], "baseline_ms": res["base"]["latency"]["p50_ms"],
            "baseline_rounds_ms": res["base"]["rounds"], "rows": rows, "models": {n: c["model"] for n, c in cands.items()},
            "keys": {n: c["key"] for n, c in cands.items()}}


def accuracies(case: dict, data, args, memo: dict) -> None:
    """Top-1 right after pruning and after the short fine-tune; identical models are scored once."""
    from edgeprune.train import evaluate, train

    train_ds, test_ds = data
    for row in case["rows"]:
        key = case["keys"][row["name"]]
        ft = args.ft_budgets is None or row["budget"] in args.ft_budgets
        if key not in memo or (ft and memo[key][1] is None):
            model = copy.deepcopy(case["models"][row["name"]])
            t0 = time.perf_counter()
            before = evaluate(model, test_ds, progress=False)
            after = None
            if ft:
                train(model, train_ds, epochs=args.ft_epochs, lr=args.ft_lr, augment=False, seed=0,
                      desc=f"fine-tune {case['target']} {row['name']}")
                after = evaluate(model, test_ds, progress=False)
            memo[key] = (before, after)
            log(f"   {case['target']} {row['name']}: top-1 {100 * before:.2f}% -> "
                f"{'—' if after is None else f'{100 * after:.2f}%'} ({time.perf_counter() - t0:.0f} s)")
        row["top1_pruned"], row["top1_ft"] = memo[key]


def f(x, fmt="{:.3f}") -> str:
    return "—" if x is None else fmt.format(x)


def case_table(case: dict) -> str:
    fit = case["calibration"]
    lines = [f"### {case['target']} ({case['runtime']}), channel multiple {case['channel_multiple']}",
             "",
             f"Unpruned: {case['baseline_calibration_ms']:.3f} ms at calibration; budget anchor {case['budget_anchor_ms']:.3f} ms "
             f"(median of {', '.join(f'{x:.3f}' for x in case['budget_anchor_rounds_ms'])}); {case['baseline_ms']:.3f} ms in the final "
             f"interleaved rounds ({', '.join(f'{x:.3f}' for x in case['baseline_rounds_ms'])}). Predictor: scale "
             f"{fit['scale']:.3f}, offset {fit['offset_ms']:+.3f} ms (unpruned + uniform 0.5). Table: {case['table_s']:.0f} s, "
             f"{case['table_meta']['rows_from_cache']} of {case['table_meta']['rows_from_cache'] + case['table_meta']['rows_measured']} "
             "rows from cache.",
             "",
             "| budget | method | kept channels per group | measured p50 ms (rounds) | within budget | predicted ms | "
             "MACs ratio | measured speed-up | predicted speed-up | speed-up error | top-1 pruned | top-1 fine-tuned |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in case["rows"]:
        extra = f" (r={r['ratio']})" if "ratio" in r else ""
        lines.append(
            f"| {r['budget']}x = {r['budget_ms']:.3f} | {r['method']}{extra} | {r['counts']} | {r['measured_ms']:.3f} "
            f"({', '.join(f'{x:.3f}' for x in r['rounds_ms'])}) | {'yes' if r['within_budget'] else 'NO'} | "
            f"{f(r['predicted_ms'])} | {r['macs_ratio']:.3f} | {r['measured_speedup']:.2f}x | "
            f"{f(r['predicted_speedup'], '{:.2f}x')}{' (MACs)' if r['method'].startswith('tp') else ''} | "
            f"{f(r['speedup_error_pct'], '{:+.0f}%')} | {f(r['top1_pruned'] and 100 * r['top1_pruned'], '{:.2f}%')} | "
            f"{f(r['top1_ft'] and 100 * r['top1_ft'], '{:.2f}%')} |")
    return "\n".join(lines)


def verdicts(case: dict) -> list[str]:
    out = []
    for b in sorted({r["budget"] for r in case["rows"]}, reverse=True):
        rows = {r["method"]: r for r in case["rows"] if r["budget"] == b}
        hw = rows["hw"]
        acc = "top1_ft" if hw["top1_ft"] is not None else "top1_pruned"
        for name in ("uniform", "tp", "tp-round"):
            o = rows[name]
            dt = 100 * (hw["measured_ms"] / o["measured_ms"] - 1)
            da = 100 * (hw[acc] - o[acc])
            out.append(f"- {case['target']} {b}x: hw {hw['measured_ms']:.3f} ms / {100 * hw[acc]:.2f}% vs {name} "
                       f"{o['measured_ms']:.3f} ms / {100 * o[acc]:.2f}% -> hw {abs(dt):.0f}% "
                       f"{'faster' if dt < 0 else 'slower'}, {da:+.2f} pp top-1 ({acc.replace('top1_', '')})")
    return out


def tracking(cases: list[dict]) -> str:
    lines = ["| method | mean abs speed-up error | max abs speed-up error | models within budget |", "|---|---|---|---|"]
    for m in ("hw", "uniform", "tp", "tp-round"):
        rows = [r for c in cases for r in c["rows"] if r["method"] == m]
        errs = [abs(r["speedup_error_pct"]) for r in rows if r["speedup_error_pct"] is not None]
        lines.append(f"| {m} | {f(np.mean(errs) if errs else None, '{:.1f}%')} | {f(max(errs) if errs else None, '{:.1f}%')} "
                     f"| {sum(r['within_budget'] for r in rows)}/{len(rows)} |")
    return "\n".join(lines)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="trained ResNet-20 checkpoint (else: train 1 epoch and save to --save-weights)")
    ap.add_argument("--save-weights", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--train-only", action="store_true", help="train and save the baseline, then stop")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch threads for training and evaluation")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--targets", default="x86,arm64")
    ap.add_argument("--budgets", default="0.7,0.5,0.35")
    ap.add_argument("--ft-epochs", type=float, default=0.25)
    ap.add_argument("--ft-lr", type=float, default=0.01)
    ap.add_argument("--ft-budgets", default="all", help="budgets whose models are fine-tuned: all, none, or a list")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache", default=str(DEFAULT_CACHE), help="latency-table cache (EDGEPRUNE_CACHE)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    args.budget_list = [float(b) for b in args.budgets.split(",")]
    fb = args.ft_budgets.strip().lower()
    args.ft_budgets = None if fb == "all" else (set() if fb == "none" else {float(b) for b in fb.split(",")})
    return args


def main() -> int:
    args = parse_args()
    os.environ["EDGEPRUNE_CACHE"] = args.cache
    torch.set_num_threads(args.torch_threads)  # 1: on this shared 2-core box, 2 threads trained slower
    from edgeprune.data import load_dataset
    from edgeprune.loading import count_flops_params
    from edgeprune.profiles import load_profile
    from edgeprune.prune.graph import PruneGraph
    from edgeprune.prune.magnitude import magnitude_scores

    started = time.perf_counter()
    data = (load_dataset(f"fashion-mnist:{args.data}", "train"), load_dataset(f"fashion-mnist:{args.data}", "test"))
    model, base_info = baseline(args, *data)
    if args.train_only:
        return 0
    example = torch.zeros(*SHAPE)
    scores = magnitude_scores(PruneGraph(copy.deepcopy(model).eval(), example))
    base_macs = count_flops_params(model, SHAPE)[0]
    targets = args.targets.split(",")
    tp_sweeps = {rt: TPSweep(model, example, rt, base_macs)
                 for rt in [None] + sorted({int(load_profile(t)["channel_multiple"]) for t in targets})}
    cases = [run_target(t, model, example, scores, tp_sweeps, base_macs, args) for t in targets]
    latency_s = time.perf_counter() - started
    memo: dict = {}
    for case in cases:
        accuracies(case, data, args, memo)
    text = "\n\n".join(case_table(c) for c in cases) + "\n\n" + "\n".join(v for c in cases for v in verdicts(c)) \
        + "\n\n" + tracking(cases)
    print(text)
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
              "baseline": {**base_info, "macs": base_macs}, "ft_epochs": args.ft_epochs, "ft_lr": args.ft_lr,
              "threads": THREADS, "rounds": args.rounds, "latency_phase_s": latency_s,
              "total_s": time.perf_counter() - started, "tp_sweeps": {str(k): sorted(v.memo.items()) for k, v in tp_sweeps.items()},
              "cases": [{k: v for k, v in c.items() if k not in ("models", "keys")} for c in cases]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hw_search.json").write_text(json.dumps(result, indent=1, default=str))
    log(f"wrote {out / 'hw_search.json'} ({result['total_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
