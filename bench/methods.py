"""The seed pruning methods at a schedule that can test their papers' claims: the runner.

One trained ResNet-20 on Fashion-MNIST (28x28, 1 channel; the cached baseline given by
``--baseline``, never retrained here) is pruned to about -50% and -70% MACs by every edgeprune
method (l1, random, taylor, slim, gate, thinet) and by Torch-Pruning's own global pruners
(MagnitudePruner + GroupMagnitudeImportance(p=1) on the baseline; BNScalePruner on the same
sparsity-trained model slim prunes). This script only *measures* and writes OUT.json; the report
(OUT.md and the PNGs) is rendered from that JSON alone by ``bench/methods_report.py``.

The phases, each resumable from the state folder (``--state``; a finished phase's JSON is reused):

1. Slimming's lambda sweep (Liu et al. 2017, Eq. 1): sparsity training of the baseline with the L1
   sub-gradient on the prunable BN scales, lambda going up from the paper's 1e-5 (ResNets) in pairs
   run in parallel (one process per lambda, 1 torch thread each), until the |gamma| histogram
   separates (``share of |gamma| < 0.01`` >= ``sep_share``). The smallest separating lambda's model
   is the one slim and tp-bnscale prune. Every lambda's |gamma| histogram goes to the JSON.
2. One process per seed (in parallel, 1 torch thread each): for each target and method, prune
   (ratio bisected on MACs to within ``tol``; Gate Decorator stops at the first tick that meets
   the MACs target), re-estimate BN statistics (``recalibrate_bn`` on 512 training images), take
   top-1 "right after pruning", fine-tune (the same epochs, lr, batch and seed for every method),
   take top-1 on the full test set. The baseline gets the same fine-tune as a control ("baseline +
   FT"). Seed 0 also runs ThiNet's same-counts controls (L1 / random / no least squares).
3. Latency: seed 0's models and the baseline, exported to ONNX, compiled for OpenVINO fp32 (x86
   profile) and measured 1 thread, interleaved in rounds, each run in a fresh process.

Usage:
  python bench/methods.py --baseline ~/.cache/edgeprune/bench-weights/r20-e8/model.pt [--seeds 0 1]
      [--ft-epochs 1.0] [--slim-epochs 2.0] [--state DIR] [--out bench/results/methods]
  python bench/methods.py --quick        # minutes, on the mini subset (numbers meaningless)
Progress and a timestamped log go to stderr.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgeprune.data import load_dataset  # noqa: E402
from edgeprune.prune import method_module, prune_model, select, slimming  # noqa: E402
from edgeprune.prune.base import PruneContext, apply_counts, prune_with_scores  # noqa: E402
from edgeprune.prune.bn import recalibrate_bn  # noqa: E402
from edgeprune.prune.graph import PruneGraph  # noqa: E402
from edgeprune.prune.magnitude import magnitude_scores, random_scores  # noqa: E402
from edgeprune.train import evaluate, train  # noqa: E402

SHAPE = (1, 1, 28, 28)
SCORED = ("l1", "random", "taylor")
HIST_EDGES = [0.0] + [float(x) for x in np.logspace(-4, 1, 26)]   # |gamma| bins: 0, 1e-4 .. 10 (log)
T0 = time.perf_counter()


@dataclasses.dataclass
class Settings:
    data: str = "fashion-mnist:/usr/share/datasets/fashion-mnist"
    baseline: str = "~/.cache/edgeprune/bench-weights/r20-e8/model.pt"
    targets: tuple = (0.5, 0.7)                   # MACs reduction targets
    tol: float = 0.01                             # bisection stops within this of the target
    seeds: tuple = (0, 1)
    batch_size: int = 128
    ft_epochs: float = 1.0                        # the common fine-tune of every pruned model
    ft_lr: float = 0.01                           # cosine from here, SGD momentum 0.9, wd 5e-4
    bn_images: int = 512                          # recalibrate_bn on this many training images
    eval_pruned_limit: int | None = 2000          # first N test images for "right after pruning"
    eval_final_limit: int | None = None           # None: the full test set
    # swept upward, two at a time. At 0.5 epoch (lr 0.02, 1-epoch baseline) the scales only shrank together up
    # to 2e-2 and collapsed at 5e-2 (70% < 0.01, the sparse model at 75.7%): too short for the loss to hold the
    # useful channels up, so the sweep trains 2 epochs per lambda and looks between those two (on the 8-epoch
    # baseline 1e-2 then separated: 43% < 0.01, sparse model 92.22%)
    slim_lambdas: tuple = (1e-5, 1e-2, 2e-2, 3e-2, 5e-2, 1e-1)
    slim_epochs: float = 2.0
    slim_lr: float = 0.02
    slim_weight_decay: float = 1e-4               # the paper's
    sep_share: float = 0.25                       # "separated": >= this share of |gamma| < 0.01
    gate: dict = dataclasses.field(default_factory=lambda: {
        # edgeprune.prune.gate's paper-like Tick-Tock (module docstring: 5% of the remaining channels per
        # tick, a tick = a tenth of an epoch, a tock of 1 epoch with lambda * sum|phi|, lambda 1e-4, every 10
        # ticks), with ticks of 20 batches (~0.04 epoch) and tocks of 0.5 epoch to fit the 2-core budget;
        # no augmentation, like every other step here
        "tick_ratio": 0.05, "tick_batches": 20, "batch_size": 128, "tick_lr": 0.01, "tock_every": 10,
        "tock_epochs": 0.5, "tock_lr": 0.01, "gate_l1": 1e-4, "augment": False})
    taylor: dict = dataclasses.field(default_factory=dict)   # library defaults (32 batches of 64)
    thinet: dict = dataclasses.field(default_factory=dict)   # library defaults (256 images x 10 positions)
    tp_max_pruning_ratio: float = 0.9             # = edgeprune's min_ratio 0.1
    rounds: int = 3
    measure: dict = dataclasses.field(default_factory=lambda: {
        "threads": 1, "warmup_s": 0.5, "min_iters": 50, "min_seconds": 1.0})


def quick_settings() -> Settings:
    """A few-minute smoke test on the mini subset with an untrained-ish baseline (numbers meaningless)."""
    return Settings(data=f"fashion-mnist:{ROOT / 'tests/data/fashion-mnist-mini'}", baseline="", seeds=(0, 1),
                    ft_epochs=0.5, eval_pruned_limit=200, eval_final_limit=200, tol=0.03, bn_images=128,
                    slim_lambdas=(1e-5, 1e-2, 5e-2), slim_epochs=1.0, slim_lr=0.05,
                    gate={"tick_ratio": 0.1, "tick_batches": 2, "batch_size": 32, "tock_every": 2,
                          "tock_steps": 3, "augment": False},
                    thinet={"samples": 32}, taylor={"taylor_batches": 4}, rounds=1,
                    measure={"threads": 1, "warmup_s": 0.1, "min_iters": 5, "min_seconds": 0.1})


def log(msg: str) -> None:
    el = time.perf_counter() - T0
    print(f"[{int(el // 60):02d}:{int(el % 60):02d}] {msg}", file=sys.stderr, flush=True)


def count(model: nn.Module) -> tuple[int, int]:
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(SHAPE))
    return int(macs), int(params)


def classifier(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def gamma_histogram(model: nn.Module) -> list[int]:
    """Counts of |gamma| of the prunable BNs in ``HIST_EDGES`` bins (the last bin is open above)."""
    return slimming.gamma_histogram(slimming.prunable_bns(PruneGraph(copy.deepcopy(model), torch.zeros(SHAPE))),
                                    HIST_EDGES)


# -- loading --------------------------------------------------------------------------------------
def load_baseline(s: Settings, train_ds) -> tuple[nn.Module, dict[str, Any]]:
    """The cached trained baseline (``s.baseline``), or for --quick a ResNet-20 trained 1 epoch on the mini set."""
    from edgeprune.loading import load_model
    from edgeprune.models import build_model

    if s.baseline:
        path = Path(os.path.expanduser(s.baseline))
        model, _spec = load_model(None, str(path), num_classes=10, in_channels=1)
        info: dict[str, Any] = {"path": str(s.baseline)}
        meta = path.with_name("train.json")
        if meta.is_file():
            info["train"] = json.loads(meta.read_text())
        return model.eval(), info
    torch.manual_seed(0)  # every worker builds the same quick baseline
    model = build_model("resnet20", num_classes=10, in_channels=1)
    hist = train(model, train_ds, epochs=1, lr=0.05, batch_size=32, augment=False, progress=False, seed=0)
    return model.eval(), {"path": None, "train": {"epochs": 1, "steps": hist["steps"]}}


# -- pruning ----------------------------------------------------------------------------------------
def bisect(make: Callable[[float], nn.Module], base_macs: int, target: float, tol: float,
           lo: float = 0.01, hi: float = 0.95, iters: int = 14) -> tuple[float, nn.Module, float]:
    """The channel ratio whose pruned model's MACs reduction is closest to ``target`` (monotone search)."""
    best = None
    for _ in range(iters):
        mid = (lo + hi) / 2
        model = make(mid)
        red = 1.0 - count(model)[0] / base_macs
        if best is None or abs(red - target) < abs(best[2] - target):
            best = (mid, model, red)
        if abs(red - target) <= tol:
            break
        lo, hi = (mid, hi) if red < target else (lo, mid)
    return best


def ctx_for(ratio: float, train_ds, seed: int, **options: Any) -> PruneContext:
    return PruneContext(example_inputs=torch.zeros(SHAPE), ratio=ratio, train_ds=train_ds, progress=False,
                        seed=seed, options=options)


def prune_scored(base: nn.Module, method: str, target: float, s: Settings, train_ds, seed: int) -> dict[str, Any]:
    """l1/random/taylor: score once, bisect the ratio, then the real ``prune_model`` call."""
    mod = method_module(method)
    opts = {"method": method, **(s.taylor if method == "taylor" else {})}
    graph = PruneGraph(copy.deepcopy(base), torch.zeros(SHAPE))
    t = time.perf_counter()
    cached = mod.scores(graph, ctx_for(0.5, train_ds, seed, **opts))
    make = lambda r: prune_with_scores(base, ctx_for(r, train_ds, seed, **opts), method,  # noqa: E731
                                       lambda g, c: cached, mod.NORMALIZE).model
    ratio, probe, _ = bisect(make, count(base)[0], target, s.tol)
    model = prune_model(base, torch.zeros(SHAPE), method, ratio, train_ds=train_ds, progress=False, seed=seed,
                        **(s.taylor if method == "taylor" else {})).model
    assert count(model)[0] == count(probe)[0], f"{method}: prune_model disagrees with the bisection probe"
    return {"model": model, "ratio": ratio, "prune_s": time.perf_counter() - t}


def prune_slim(sparse: nn.Module, target: float, s: Settings, train_ds, base_macs: int, lam: float) -> dict[str, Any]:
    make = lambda r: prune_model(sparse, torch.zeros(SHAPE), "slim", r, train_ds=train_ds,  # noqa: E731
                                 progress=False, sparsity=lam, sparsity_epochs=0).model
    ratio, model, _ = bisect(make, base_macs, target, s.tol)
    return {"model": model, "ratio": ratio, "prune_s": None}


def tp_pruned(base: nn.Module, kind: str, ratio: float, s: Settings) -> nn.Module:
    """Torch-Pruning's own global pruner on a copy of ``base``."""
    model = copy.deepcopy(base).eval()
    common = dict(global_pruning=True, pruning_ratio=ratio, ignored_layers=[classifier(model)],
                  max_pruning_ratio=s.tp_max_pruning_ratio)
    if kind == "tp-magnitude":
        pruner = tp.pruner.MagnitudePruner(model, torch.zeros(SHAPE), tp.importance.GroupMagnitudeImportance(p=1),
                                           **common)
    else:
        pruner = tp.pruner.BNScalePruner(model, torch.zeros(SHAPE), tp.importance.BNScaleImportance(), **common)
    pruner.step()
    return model.eval()


def prune_tp(src: nn.Module, kind: str, target: float, s: Settings, base_macs: int) -> dict[str, Any]:
    ratio, model, _ = bisect(lambda r: tp_pruned(src, kind, r, s), base_macs, target, s.tol)
    return {"model": model, "ratio": ratio, "prune_s": None}


def uniform_counts_for(base: nn.Module, target: float, s: Settings) -> tuple[float, list[int]]:
    """ThiNet's ratio: per-layer counts are ``select.uniform_counts``, so bisect on those counts."""
    widths = [g.channels for g in PruneGraph(copy.deepcopy(base), torch.zeros(SHAPE)).groups]

    def make(r: float) -> nn.Module:
        model = copy.deepcopy(base).eval()
        graph = PruneGraph(model, torch.zeros(SHAPE))
        apply_counts(graph, [torch.arange(w, 0, -1).numpy() for w in widths], select.uniform_counts(widths, r, None, 0.1))
        return model
    ratio, _, _ = bisect(make, count(base)[0], target, s.tol)
    return ratio, select.uniform_counts(widths, ratio, None, 0.1)


def with_counts(base: nn.Module, scores_fn: Callable[[PruneGraph], list], counts: list[int]) -> nn.Module:
    model = copy.deepcopy(base).eval()
    graph = PruneGraph(model, torch.zeros(SHAPE))
    apply_counts(graph, scores_fn(graph), counts)
    return model.eval()


def run_gate(base: nn.Module, s: Settings, train_ds, base_macs: int, seed: int) -> dict[float, dict[str, Any]]:
    """One Tick-Tock run to the largest target; smaller targets are snapshots at their first tick."""
    snaps: dict[float, dict[str, Any]] = {}
    t, calls = time.perf_counter(), [0]

    def stop_when(melted: nn.Module) -> bool:  # called before the first tick, then after every tick
        red = 1.0 - count(melted)[0] / base_macs
        for target in s.targets:
            if red >= target and target not in snaps:
                snaps[target] = {"model": copy.deepcopy(melted).eval(), "prune_s": time.perf_counter() - t,
                                 "tick": calls[0]}
        calls[0] += 1
        return red >= max(s.targets)
    res = prune_model(base, torch.zeros(SHAPE), "gate", 0.5, train_ds=train_ds, progress=False, seed=seed,
                      stop_when=stop_when, **s.gate)
    history = res.extra.get("history", [])
    extra = {k: v for k, v in res.extra.items() if k != "history"}
    for snap in snaps.values():
        tocks = sum(1 for h in history if h["tock"] and h["tick"] < snap["tick"])
        snap.update(ratio=None, extra={**extra, "tocks_before_snapshot": tocks})
    return snaps


def thinet_controls(base: nn.Module, target: float, s: Settings, train_ds, test_ds, ratio: float,
                    counts: list[int], thinet_model: nn.Module) -> list[dict[str, Any]]:
    """ThiNet's claim: the same per-layer counts chosen by L1 / random / ThiNet without least squares."""
    nols = prune_model(base, torch.zeros(SHAPE), "thinet", ratio, train_ds=train_ds, progress=False,
                       rescale=False, **s.thinet).model
    made = {"thinet": thinet_model, "thinet (no least squares)": nols,
            "l1 (same counts)": with_counts(base, lambda g: magnitude_scores(g, 1), counts),
            "random (same counts)": with_counts(base, lambda g: random_scores(g, 0), counts)}
    rows = []
    for name, m in made.items():
        m = copy.deepcopy(m)
        raw = evaluate(m, test_ds, limit=s.eval_pruned_limit, progress=False)
        recalibrate_bn(m, train_ds, images=s.bn_images)
        rows.append({"target": target, "selection": name, "ratio": ratio, "macs": count(m)[0], "acc_raw": raw,
                     "acc_pruned": evaluate(m, test_ds, limit=s.eval_pruned_limit, progress=False)})
    return rows


def finish(row: dict[str, Any], s: Settings, train_ds, test_ds, base_macs: int, seed: int) -> dict[str, Any]:
    """Count, re-estimate BN, evaluate, fine-tune, evaluate again one pruned model (in place)."""
    model = row["model"]
    macs, params = count(model)
    row.update(macs=macs, params=params, macs_reduction=1.0 - macs / base_macs,
               acc_raw=evaluate(model, test_ds, limit=s.eval_pruned_limit, progress=False))
    recalibrate_bn(model, train_ds, images=s.bn_images, seed=seed)
    row["acc_pruned"] = evaluate(model, test_ds, limit=s.eval_pruned_limit, progress=False)
    hist = train(model, train_ds, epochs=s.ft_epochs, lr=s.ft_lr, batch_size=s.batch_size, augment=False,
                 desc=f"fine-tune {row['name']} {row['target']:.0%}", seed=seed, progress=False)
    row.update(ft_steps=hist["steps"], ft_s=hist["seconds"],
               acc_ft=evaluate(model, test_ds, limit=s.eval_final_limit, progress=False))
    ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3f}"
    log(f"seed {seed} {row['name']:>12} {row['target']:.0%}: ratio {ratio} MACs -{row['macs_reduction']:.1%} "
        f"acc raw {row['acc_raw']:.4f} bn {row['acc_pruned']:.4f} -> ft {row['acc_ft']:.4f} ({hist['seconds']:.0f} s)")
    return row


# -- phases -----------------------------------------------------------------------------------------
def phase_sweep_one(s: Settings, lam: float, state: Path) -> dict[str, Any]:
    """Sparsity-train the baseline with one lambda; writes sweep-<lam>.json and the sparse model."""
    train_ds, test_ds = load_dataset(s.data, "train"), load_dataset(s.data, "test")
    base, _ = load_baseline(s, train_ds)
    model = copy.deepcopy(base)
    bns = slimming.prunable_bns(PruneGraph(model, torch.zeros(SHAPE)))
    before, hist_before = slimming.small_gamma_share(bns), gamma_histogram(base)
    h = train(model, train_ds, epochs=s.slim_epochs, lr=s.slim_lr, batch_size=s.batch_size,
              weight_decay=s.slim_weight_decay, augment=False, desc=f"sparsity {lam:g}", seed=0, progress=False,
              after_backward=slimming.l1_subgradient_hook(bns, lam))
    g = torch.cat([bn.weight.detach().abs().flatten() for bn in bns])
    info = {"lambda": lam, "epochs": s.slim_epochs, "lr": s.slim_lr, "steps": h["steps"], "seconds": h["seconds"],
            "small_gamma_share_before": before, "small_gamma_share_after": slimming.small_gamma_share(bns),
            "gamma_median_after": float(g.median()), "acc": evaluate(model, test_ds, limit=s.eval_final_limit,
                                                                     progress=False),
            "hist_before": hist_before, "hist_after": gamma_histogram(model)}
    torch.save(model, state / f"sparse-{lam:g}.pt")
    (state / f"sweep-{lam:g}.json").write_text(json.dumps(info))
    log(f"sparsity lambda {lam:g}: |gamma|<0.01 {before:.3f} -> {info['small_gamma_share_after']:.3f}, "
        f"acc {info['acc']:.4f} ({h['seconds']:.0f} s)")
    return info


def phase_seed(s: Settings, seed: int, lam: float, state: Path) -> dict[str, Any]:
    """Every method at every target for one seed; seed 0 keeps its models for the latency phase."""
    t_seed = time.perf_counter()
    train_ds, test_ds = load_dataset(s.data, "train"), load_dataset(s.data, "test")
    base, _ = load_baseline(s, train_ds)
    sparse = torch.load(state / f"sparse-{lam:g}.pt", weights_only=False).eval()
    base_macs = count(base)[0]
    out: dict[str, Any] = {"seed": seed, "rows": [], "thinet_controls": []}
    # the control: the baseline with the same fine-tune (no pruning)
    ctl = copy.deepcopy(base)
    h = train(ctl, train_ds, epochs=s.ft_epochs, lr=s.ft_lr, batch_size=s.batch_size, augment=False,
              desc="fine-tune baseline", seed=seed, progress=False)
    out["baseline_ft"] = {"acc_ft": evaluate(ctl, test_ds, limit=s.eval_final_limit, progress=False),
                          "ft_steps": h["steps"], "ft_s": h["seconds"]}
    log(f"seed {seed} baseline + FT: {out['baseline_ft']['acc_ft']:.4f} ({h['seconds']:.0f} s)")
    t = time.perf_counter()
    gate = run_gate(base, s, train_ds, base_macs, seed)
    log(f"seed {seed} gate tick-tock done in {time.perf_counter() - t:.0f} s: {sorted(gate)}")
    models_dir = state / "models"
    models_dir.mkdir(exist_ok=True)
    for target in s.targets:
        made: dict[str, dict[str, Any]] = {m: prune_scored(base, m, target, s, train_ds, seed) for m in SCORED}
        made["slim"] = prune_slim(sparse, target, s, train_ds, base_macs, lam)
        if target in gate:
            made["gate"] = gate[target]
        ratio, counts = uniform_counts_for(base, target, s)
        t = time.perf_counter()
        res = prune_model(base, torch.zeros(SHAPE), "thinet", ratio, train_ds=train_ds, progress=False, seed=seed,
                          **s.thinet)
        assert [g["after"] for g in res.groups] == counts, "thinet kept other counts than uniform_counts"
        made["thinet"] = {"model": res.model, "ratio": ratio, "prune_s": time.perf_counter() - t}
        if seed == s.seeds[0]:
            out["thinet_controls"] += thinet_controls(base, target, s, train_ds, test_ds, ratio, counts, res.model)
        made["tp-magnitude"] = prune_tp(base, "tp-magnitude", target, s, base_macs)
        made["tp-bnscale"] = prune_tp(sparse, "tp-bnscale", target, s, base_macs)
        for name, row in made.items():
            row = finish({"name": name, "target": target, **row}, s, train_ds, test_ds, base_macs, seed)
            if seed == s.seeds[0]:
                torch.save(row["model"], models_dir / f"{name}-{round(100 * target)}.pt")
            del row["model"]
            out["rows"].append(row)
    out["seconds"] = time.perf_counter() - t_seed
    (state / f"seed-{seed}.json").write_text(json.dumps(out, default=str))
    return out


def phase_latency(s: Settings, state: Path, base: nn.Module, names: list[str]) -> dict[str, dict[str, Any]]:
    """Export, compile (OpenVINO fp32, x86 profile) and measure seed 0's models interleaved in rounds."""
    from edgeprune.export import export_onnx
    from edgeprune.measure.protocol import MeasureSettings, measure_interleaved
    from edgeprune.profiles import load_profile
    from edgeprune.targets import require_runtime

    ov, profile, arts = require_runtime("openvino"), load_profile("x86"), {}
    models = {"baseline": base, **{n: torch.load(state / "models" / f"{n}.pt", weights_only=False) for n in names}}
    with tempfile.TemporaryDirectory(prefix="edgeprune-methods-") as tmp:
        work = Path(tmp)
        for name, model in models.items():
            onnx_path = export_onnx(model.eval(), SHAPE, work / f"{name}.onnx")["path"]
            arts[name] = ov.compile(onnx_path, "fp32", None, profile, work / name).path
        log(f"compiled {len(arts)} OpenVINO artifacts; measuring {s.rounds} interleaved rounds")
        res = measure_interleaved(arts, MeasureSettings(**s.measure), rounds=s.rounds, progress=False)
    return {n: {"p50_ms": r["p50_ms_median"], "p50_ms_min": r["p50_ms_min"], "rounds": r["rounds"],
                "spread": r["noise"]["spread"]} for n, r in res.items()}


def environment() -> dict[str, Any]:
    import openvino
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "load_at_start": os.getloadavg()[0], "torch": torch.__version__,
            "torch_pruning": tp.__version__, "openvino": openvino.__version__, "python": platform.python_version()}


# -- orchestration ----------------------------------------------------------------------------------
def _spawn(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], env=env)


def _parallel(jobs: list[list[str]], width: int = 2) -> None:
    """Run worker invocations of this script, ``width`` at a time; any failure stops the run."""
    running: list[subprocess.Popen] = []
    for job in jobs:
        while len(running) >= width:
            running = [p for p in running if _alive(p)]
            time.sleep(2)
        running.append(_spawn(job))
    for p in running:
        if p.wait() != 0:
            raise SystemExit(f"worker {p.args[2:]} failed with exit code {p.returncode}")


def _alive(p: subprocess.Popen) -> bool:
    rc = p.poll()
    if rc not in (None, 0):
        raise SystemExit(f"worker {p.args[2:]} failed with exit code {rc}")
    return rc is None


def run(s: Settings, state: Path, common: list[str]) -> dict[str, Any]:
    state.mkdir(parents=True, exist_ok=True)
    first = state / "started"  # a resumed run counts its wall time from the first start
    if not first.is_file():
        first.write_text(repr(time.time()))
    t_start = float(first.read_text())
    started = datetime.fromtimestamp(t_start, timezone.utc).isoformat(timespec="seconds")
    env = environment()
    timing: dict[str, float] = {}
    # 1. lambda sweep, two lambdas at a time, upward until the scales separate
    t = time.perf_counter()
    sweep, chosen = [], None
    lams = list(s.slim_lambdas)
    for i in range(0, len(lams), 2):
        pair = lams[i:i + 2]
        _parallel([[*common, "--worker-sweep", repr(lam)] for lam in pair
                   if not (state / f"sweep-{lam:g}.json").is_file()])
        for lam in pair:
            sweep.append(json.loads((state / f"sweep-{lam:g}.json").read_text()))
        separated = [x for x in sweep if x["small_gamma_share_after"] >= s.sep_share]
        if separated:
            chosen = min(x["lambda"] for x in separated)
            break
    if chosen is None:
        chosen = max(x["lambda"] for x in sweep)
    timing["sweep_s"] = time.perf_counter() - t
    log(f"slimming lambda: {chosen:g}")
    # 2. one worker per seed, in parallel
    t = time.perf_counter()
    _parallel([[*common, "--worker-seed", str(seed), "--lam", repr(chosen)] for seed in s.seeds
               if not (state / f"seed-{seed}.json").is_file()])
    seeds = {str(seed): json.loads((state / f"seed-{seed}.json").read_text()) for seed in s.seeds}
    timing["seeds_s"] = time.perf_counter() - t
    # 3. latency of seed 0's models
    t = time.perf_counter()
    torch.set_num_threads(1)
    train_ds, test_ds = load_dataset(s.data, "train"), load_dataset(s.data, "test")
    base, base_info = load_baseline(s, train_ds)
    macs, params = count(base)
    names = [f"{r['name']}-{round(100 * r['target'])}" for r in seeds[str(s.seeds[0])]["rows"]]
    lat_file = state / "latency.json"
    if lat_file.is_file():
        lat = json.loads(lat_file.read_text())
    else:
        lat = phase_latency(s, state, base, names)
        lat_file.write_text(json.dumps(lat))
    timing["latency_s"] = time.perf_counter() - t
    baseline = {**base_info, "macs": macs, "params": params,
                "acc": evaluate(base, test_ds, limit=s.eval_final_limit, progress=False),
                "acc_subset": evaluate(base, test_ds, limit=s.eval_pruned_limit, progress=False),
                "hist": gamma_histogram(base)}
    return {"command": " ".join(["python", *sys.argv]), "date": started, "environment": env,
            "settings": dataclasses.asdict(s), "train_size": len(train_ds), "test_size": len(test_ds),
            "baseline": baseline, "hist_edges": HIST_EDGES, "sweep": sweep, "slim_lambda": chosen,
            "seeds": seeds, "latency": lat, "timing": timing, "seconds": time.time() - t_start,
            "resumed": (state / "resumed").is_file()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test on the mini subset")
    ap.add_argument("--baseline", help="the trained ResNet-20 checkpoint (edgeprune train's model.pt)")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--ft-epochs", type=float)
    ap.add_argument("--slim-epochs", type=float, help="sparsity-training epochs per lambda of the sweep")
    ap.add_argument("--state", help="folder for resumable phase results and models (default: a cache folder)")
    ap.add_argument("--out", default="bench/results/methods", help="writes OUT.json (then renders OUT.md)")
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--worker-sweep", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--worker-seed", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--lam", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    s = quick_settings() if args.quick else Settings()
    if args.baseline:
        s.baseline = args.baseline
    if args.seeds:
        s.seeds = tuple(args.seeds)
    if args.ft_epochs is not None:
        s.ft_epochs = args.ft_epochs
    if args.slim_epochs is not None:
        s.slim_epochs = args.slim_epochs
    state = Path(os.path.expanduser(args.state or ("~/.cache/edgeprune/methods-state" + ("-quick" if args.quick else ""))))
    common = [a for a in sys.argv[1:]]
    if args.worker_sweep is not None or args.worker_seed is not None:
        torch.set_num_threads(1)
        if args.worker_sweep is not None:
            phase_sweep_one(s, args.worker_sweep, state)
        else:
            phase_seed(s, args.worker_seed, args.lam, state)
        return 0
    common += ["--state", str(state)] if not args.state else []
    if (state / "started").is_file():
        (state / "resumed").write_text("1")
    result = run(s, state, common)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    log(f"wrote {out}.json in {result['seconds']:.0f} s")
    if not args.no_report:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from methods_report import render_files
        log(f"wrote {render_files(out.with_suffix('.json'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
