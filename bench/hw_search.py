"""Budget search vs the baselines at equal *measured* latency: is the knapsack search the most accurate?

Protocol (issue 11), per target and budget (a share of the unpruned model's p50 from the calibration's paired measurement):
- one trained checkpoint for every arm; fp32, 1 thread;
- arms: ``knapsack`` (the default ``--budget-ms`` search: BN-Taylor importance, iterative knapsack,
  adaptive-BN arbitration among one-shot candidates and trained ones, among them a progressive schedule pruned
  while it fine-tunes; that training is part of the search, as Gate Decorator's ticks and tocks are part of it),
  ``greedy`` (the earlier search, L1 importance), ``uniform`` (every layer loses the same share, L1 channels kept),
  ``tp`` (Torch-Pruning's global ``MagnitudePruner`` with ``GroupMagnitudeImportance(p=1)`` and ``round_to`` =
  the search's grid: the runtime's channel block read off the table where every group uses it, ``--channel-block``,
  else the target's multiple), ``gate`` (Gate Decorator's Tick-Tock, ``GATE`` below: one run down past the search
  model's MACs, a snapshot after every tick; its ticks and tocks train the model a little before the common
  fine-tune, which favours this arm);
- knapsack and greedy run the driver's search-measure-tighten loop against the budget (every budget
  starts from the same calibration); uniform, tp and gate are then *matched on measured latency* to the
  knapsack model: six candidates around the predicted (uniform) or MACs (tp, gate) match are measured paired
  against it (``measure.paired``: alternating bursts in one process, 2 processes); of those at most 3% slower
  than it, the one that removes the fewest channels is taken (the most favourable to the arm), else the closest;
- every arm: BN statistics re-estimated on 512 training images, then the same fine-tune
  (``--ft-epochs`` of the training set, SGD lr ``--ft-lr``, cosine, batch 128, no augmentation, the seed's
  batch order), top-1 on the full test set;
- seeds change the search's randomness (importance batches, random candidates, step fine-tunes) and
  every arm's fine-tuning order; mean ± std over seeds;
- final latency: per (budget, seed), the five arms measured paired against the unpruned model in
  ``--rounds`` fresh processes (alternating bursts, so a shared machine's load phases cancel out of each
  ratio); a model's figure is its median ratio to the unpruned model times the calibration's baseline; the table says
  how far each arm is from the knapsack model's latency (the protocol asks for within ±3%). Results are
  written after every (budget, seed), so a stopped run still leaves its finished cells.
Writes bench/results/hw_search.json, hw_search.md and hw_search.png (top-1 vs measured latency).

Usage: python bench/hw_search.py --weights CKPT [--image-size PX] [--targets x86] [--budgets 0.7,0.5,0.35]
           [--seeds 0,1] [--ft-epochs 0.15] [--rounds 3] [--merge] [--out DIR]
       (CKPT: any `edgeprune train` checkpoint, e.g. ResNet-20 at 28x28 or MobileNetV2 trained with
       --image-size 96; pass the same --image-size here)
       python bench/hw_search.py --rewrite   (the .md and .png again from hw_search.json)
       python bench/hw_search.py --pool RUN1,RUN2,RUN3 --out DIR   (one report over runs of other seeds: mean ± std)
       python bench/hw_search.py --weights CKPT --controls --targets x86 --budgets 0.5   (add the control arms to
           stored cells, or redo those that trained less than the search's winner; new runs add them as they go)

Control arms ``uniform+`` and ``tp+``: the uniform and Torch-Pruning arms' own models, fine-tuned for
``--ft-epochs`` plus the training the search's winner had inside the search, and at least the progressive
schedule's (8 steps x 30 mini-batches of 64, about 0.26 epoch; a progressive winner that also had the finalists'
40 mini-batches had 0.30), so the search's lead is not just more training. And ``search+``: when the search's
winner trained less than that inside the search (a one-shot candidate: only the finalists' 40 mini-batches), its
model fine-tuned by the difference, so that comparison is at equal total training both ways. Since the search tops
such a winner up itself (``SearchSettings.top_up``, the default), ``search+`` appears only in runs from before that
change.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
THREADS, PRECISION = 1, "fp32"
ARMS = ("knapsack", "greedy", "uniform", "tp", "gate", "uniform+", "tp+", "search+")
# "uniform+" and "tp+": the uniform and Torch-Pruning arms' own models fine-tuned longer by the training the
# search's winner had inside the search, at least the progressive schedule's (``Bench.equal_training_epochs``), so
# that the search's advantage is not just more training. They share their arm's model, so its measured latency.
CONTROLS = {"uniform": "uniform+", "tp": "tp+"}
# Gate Decorator's Tick-Tock for the ``gate`` arm: the paper's 5% of the remaining channels per tick, a tock every
# 4 ticks capped at 40 SGD steps, so its extra training stays near the search's own (3 x 30 step batches + 6 x 40
# finalist batches), and below one epoch.
GATE = {"tick_ratio": 0.05, "tick_batches": 8, "batch_size": 64, "tock_every": 4, "tock_steps": 40,
        "tock_lr": 0.01, "gate_l1": 1e-4, "augment": False}


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def tp_prune(model, example, ratio: float, round_to: int | None):
    import torch_pruning as tp

    m = copy.deepcopy(model).eval()
    head = [x for x in m.modules() if isinstance(x, torch.nn.Linear)][-1:]  # the classifier keeps its outputs
    pruner = tp.pruner.MagnitudePruner(m, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                       global_pruning=True, pruning_ratio=ratio, ignored_layers=head,
                                       round_to=round_to)
    pruner.step()
    return m


def macs(model, shape) -> int:
    from edgeprune.loading import count_flops_params

    return count_flops_params(model, shape)[0]


MATCH_TOLERANCE = 1.03  # an arm matches the search's model when it measures at most 3% slower


def matched(models: dict, ms: dict[str, float], ratio_of) -> str:
    """The arm's candidate that matches the target: of those measured within ``MATCH_TOLERANCE`` of it, the one
    that removes the fewest channels (the most favourable to the arm); when none is, the closest in latency."""
    within = [k for k in models if ms[k] <= MATCH_TOLERANCE * ms["target"]]
    if within:
        return min(within, key=ratio_of)
    return min(models, key=lambda k: abs(ms[k] - ms["target"]))


class Bench:
    def __init__(self, args, model, train_ds, test_ds):
        self.args, self.model, self.train_ds, self.test_ds = args, model.eval(), train_ds, test_ds
        self.shape = (1, train_ds.channels, train_ds.image_size, train_ds.image_size)
        self.example = torch.zeros(*self.shape)
        self.tmp = Path(tempfile.mkdtemp(prefix="edgeprune-hwsearch-"))
        self.n = 0
        self.checkpoint = None  # called with the target's results after every (budget, seed) cell

    def compile(self, hs, model) -> str:
        from edgeprune.export import export_onnx
        from edgeprune.targets import require_runtime

        self.n += 1
        dest = self.tmp / f"m{self.n}"
        onnx_path = export_onnx(model, self.shape, dest / "m.onnx")["path"]
        return str(require_runtime(hs.profile["runtime"]).compile(Path(onnx_path), hs.precision, hs.calib,
                                                                   hs.profile, dest / "art").path)

    def paired(self, hs, arts: dict[str, str], rounds: int, reference: str) -> dict[str, float]:
        """p50 of every artifact, paired against ``reference`` in alternating bursts (``measure.paired``); on the
        calibration's scale when the reference is the unpruned model, so arms and budget compare directly."""
        from edgeprune.measure.paired import measure_paired

        res = measure_paired(arts, hs.settings, rounds=rounds, reference=reference,
                             reference_ms=hs.baseline_ms if reference == "base" else None)
        self.last_paired = res
        return {k: float(v["p50_ms"]) for k, v in res.items()}

    def searched(self, hs, budget_ms: float, strategy: str, seed: int):
        from edgeprune.prune.base import PruneContext
        from edgeprune.search.settings import SearchSettings
        from edgeprune.search.driver import prune_to_budget

        method = "taylor_bn" if strategy == "knapsack" else "l1"
        pctx = PruneContext(example_inputs=self.example, round_to=hs.multiple, train_ds=self.train_ds,
                            progress=False, seed=seed, options={"method": method})
        saved = list(hs.samples)
        try:
            result, search = prune_to_budget(self.model, self.example, hs.profile, f"{budget_ms:.6f}ms", method,
                                             pctx, THREADS, None, 3, False,
                                             SearchSettings(strategy=strategy, seed=seed), state={"hs": hs})
        finally:  # every search starts from the same calibration
            hs.samples = saved
            hs.predictor.calibrate(saved)
        return result.model, search

    def match(self, hs, target_art: str, models: dict, removed) -> tuple[str, dict[str, float]]:
        """Compile ``models`` (name -> (model, ...)), measure them paired against the search's model (2 processes)
        and pick the match (``matched``, ``removed``: a name's share removed); the match's name and every p50."""
        arts = {"target": target_art, **{k: self.compile(hs, m[0]) for k, m in models.items()}}
        ms = self.paired(hs, arts, 2, "target")
        return matched(models, ms, removed), ms

    def uniform_matched(self, hs, target_art: str, target_pred: float) -> tuple[torch.nn.Module, dict]:
        from edgeprune.prune.importance import get
        from edgeprune.prune.select import uniform_counts

        scores = get("l1").scores(hs._graph(), None)  # L1 needs no context
        options = {}
        for r in np.arange(0.02, 0.96, 0.01):
            counts = uniform_counts(hs.widths, float(r), multiples=hs.multiples)
            options.setdefault(tuple(counts), float(r))
        near = sorted(options, key=lambda c: abs(hs.predictor.predict(list(c)) - target_pred))[:6]
        models = {f"u{i}": (hs.prune_counts(list(c), scores), options[c], list(c)) for i, c in enumerate(near)}
        best, ms = self.match(hs, target_art, models, lambda k: models[k][1])
        return models[best][0], {"ratio": models[best][1], "counts": models[best][2], "match_ms": ms[best],
                                 "target_ms": ms["target"]}

    def tp_matched(self, hs, target_model, target_art: str) -> tuple[torch.nn.Module, dict]:
        goal = macs(target_model, self.shape) / macs(self.model, self.shape)
        grid = {}
        for r in np.arange(0.02, 0.95, 0.02):
            grid[float(round(r, 3))] = macs(tp_prune(self.model, self.example, float(r), arm_round_to(hs)), self.shape) / macs(self.model, self.shape)
        near = sorted(grid, key=lambda r: abs(grid[r] - goal))[:6]
        models = {f"t{i}": (tp_prune(self.model, self.example, r, arm_round_to(hs)), r) for i, r in enumerate(near)}
        best, ms = self.match(hs, target_art, models, lambda k: models[k][1])
        return models[best][0], {"ratio": models[best][1], "macs_ratio_goal": goal, "match_ms": ms[best],
                                 "target_ms": ms["target"]}

    def gate_matched(self, hs, target_model, target_art: str, seed: int) -> tuple[torch.nn.Module, dict]:
        """Gate Decorator matched on measured latency: one Tick-Tock run down past the search model's MACs, a
        snapshot (gates melted) after every tick; the six nearest in MACs are measured paired against it."""
        from edgeprune.prune import prune_model

        base = macs(self.model, self.shape)
        goal = macs(target_model, self.shape) / base
        snaps: list[tuple[float, torch.nn.Module]] = []

        def stop_when(melted) -> bool:  # called before the first tick, then after every tick
            share = macs(melted, self.shape) / base
            snaps.append((share, copy.deepcopy(melted).eval()))
            return share <= 0.8 * goal
        t = time.perf_counter()
        prune_model(self.model, self.example, "gate", 0.5, arm_round_to(hs), train_ds=self.train_ds, progress=False,
                    seed=seed, stop_when=stop_when, **GATE)
        tick_s = time.perf_counter() - t
        near = sorted(range(len(snaps)), key=lambda i: abs(snaps[i][0] - goal))[:6]
        models = {f"g{i}": (snaps[i][1], snaps[i][0]) for i in near}
        best, ms = self.match(hs, target_art, models, lambda k: -models[k][1])  # the most MACs kept among matches
        return models[best][0], {"tick": int(best[1:]), "macs_share": models[best][1], "macs_ratio_goal": goal,
                                 "tick_tock_s": tick_s, "match_ms": ms[best], "target_ms": ms["target"]}

    def finetune(self, model, seed: int, extra_epochs: float = 0.0) -> dict:
        from edgeprune.prune.bn import recalibrate_bn
        from edgeprune.train import evaluate, train

        m = copy.deepcopy(model)
        recalibrate_bn(m, self.train_ds, 512, seed=seed)
        before = evaluate(m, self.test_ds, progress=False)
        epochs = self.args.ft_epochs + extra_epochs
        if epochs > 0:
            train(m, self.train_ds, epochs=epochs, lr=self.args.ft_lr, batch_size=128, augment=False,
                  progress=False, desc="fine-tune", seed=seed)
        return {"top1_after_prune": before, "top1": evaluate(m.eval(), self.test_ds, progress=False)}

    def equal_training_epochs(self, search: dict) -> float:
        """Epochs the control arms get on top of the common fine-tune: the training the search's winner had inside
        the search (``search``: the knapsack arm's row or the search's result, with its winner and candidates),
        and at least the progressive candidate's schedule (its steps x step batches x batch size over the training
        set), so the controls never train less than the search's trained candidates could."""
        from edgeprune.search.settings import SearchSettings

        return max(SearchSettings().progressive_images, winner_trained_images(search)) / len(self.train_ds)

    def controls(self, models: dict, rows: list[dict], extra: float) -> list[dict]:
        """The control rows of one cell: ``models`` maps an arm (uniform, tp) to its model; ``rows`` are the
        cell's measured rows, whose latency the control shares; ``extra``: the cell's ``equal_training_epochs``."""
        out = []
        for arm, model in models.items():
            row = next(r for r in rows if r["arm"] == arm)
            acc = self.finetune(model, row["seed"], extra)
            out.append({**{k: v for k, v in row.items() if k not in ("top1", "top1_after_prune")}, **acc,
                        "arm": CONTROLS[arm], "name": row["name"] + "+", "extra_epochs": extra})
            log(f"      {CONTROLS[arm]}: top-1 {acc['top1']:.4f} after {self.args.ft_epochs} + {extra:.3f} epochs")
        return out

    def search_control(self, model, search: dict, rows: list[dict], extra: float) -> list[dict]:
        """``search+``: when the search's winner trained less inside the search than the controls' extra (a one-shot
        candidate: only the finalists' mini-batches), its model fine-tuned by the difference, so it meets uniform+ and tp+ at equal
        total training too. No row when the winner had all of it."""
        short = extra - winner_trained_images(search) / len(self.train_ds)
        if short <= 1e-9:
            return []
        row = next(r for r in rows if r["arm"] == "knapsack")
        acc = self.finetune(model, row["seed"], short)
        log(f"      search+: top-1 {acc['top1']:.4f} after {self.args.ft_epochs} + {short:.3f} epochs")
        return [{**{k: v for k, v in row.items() if k not in ("top1", "top1_after_prune")}, **acc,
                 "arm": "search+", "name": row["name"] + "+", "extra_epochs": short}]

    def rebuild(self, row: dict, multiple: int):
        """The uniform or Torch-Pruning arm's model of a stored row (L1 channels at its counts; TP at its ratio)."""
        if row["arm"] == "tp":
            return tp_prune(self.model, self.example, row["ratio"], multiple)
        return l1_at_counts(self.model, self.example, row["counts"])


def l1_at_counts(model, example, counts: list[int]):
    """A pruned copy of ``model`` keeping the ``counts[i]`` channels of largest L1 norm in group i (the uniform arm's
    model at its counts)."""
    from edgeprune.prune.base import apply_counts
    from edgeprune.prune.graph import PruneGraph
    from edgeprune.prune.importance import get

    graph = PruneGraph(copy.deepcopy(model).eval(), example)
    if len(graph.groups) != len(counts):
        raise ValueError(f"{len(counts)} channel counts for a model of {len(graph.groups)} prunable groups")
    apply_counts(graph, get("l1").scores(graph, None), counts)
    return graph.model


def arm_round_to(hs) -> int:
    """The one channel multiple the Torch-Pruning and Gate Decorator arms round to: the search's block where every
    group uses it (the same grid as the search and uniform arms), else the grid."""
    return hs.multiples[0] if len(set(hs.multiples)) == 1 and hs.multiples[0] % hs.multiple == 0 else hs.multiple


def run_target(bench: Bench, target: str) -> dict:
    from edgeprune.measure.protocol import MeasureSettings
    from edgeprune.profiles import load_profile
    from edgeprune.search.hardware import HardwareSearch

    args = bench.args
    profile = {**load_profile(target), "precision": PRECISION}
    log(f"== {target} ({profile['runtime']})")
    settings = MeasureSettings(threads=THREADS, warmup_s=0.5, min_seconds=1.0)
    t0 = time.perf_counter()
    hs = HardwareSearch(bench.model, bench.example, profile, PRECISION, THREADS, settings, progress=False,
                        channel_block=args.channel_block == "on")
    table_s = time.perf_counter() - t0
    fit = hs.calibrate()
    base_art = bench.compile(hs, bench.model)
    anchor = hs.baseline_ms  # the calibration's paired figure, as the driver's relative budget
    log(f"   table {table_s:.0f} s; baseline {anchor:.3f} ms; predictor scale {fit['scale']:.2f} "
        f"offset {fit['offset_ms']:+.3f}")
    rows, base_ms = [], []
    case = {"target": target, "runtime": profile["runtime"], "multiple": arm_round_to(hs), "table_s": table_s,
            "grid": hs.multiple, "channel_block": hs.block_report(),
            "anchor_ms": anchor, "baseline_final_ms": anchor, "calibration": fit, "rows": rows,
            "baseline_macs": macs(bench.model, bench.shape)}
    for b in args.budget_list:
        budget_ms = b * anchor
        for seed in args.seed_list:
            log(f"   budget {b}x = {budget_ms:.3f} ms, seed {seed}")
            cell = {}
            t = time.perf_counter()
            try:
                k_model, k_search = bench.searched(hs, budget_ms, "knapsack", seed)
            except Exception as exc:  # noqa: BLE001 - a failed search is a result of the benchmark
                log(f"      knapsack failed: {exc}")
                rows.append({"target": target, "budget": b, "seed": seed, "arm": "knapsack", "error": str(exc)})
                if bench.checkpoint:
                    bench.checkpoint(case)
                continue
            cell["knapsack"] = (k_model, {"winner": k_search["winner"], "candidates": k_search["candidates"],
                                          "search_s": time.perf_counter() - t,
                                          "search_measured_ms": k_search["measured_ms"]})
            k_art = bench.compile(hs, k_model)
            log(f"      knapsack: winner {k_search['winner']}, measured {k_search['measured_ms']:.3f} ms")
            try:
                g_model, g_search = bench.searched(hs, budget_ms, "greedy", seed)
                cell["greedy"] = (g_model, {"search_measured_ms": g_search["measured_ms"]})
            except Exception as exc:  # noqa: BLE001
                log(f"      greedy failed: {exc}")
                rows.append({"target": target, "budget": b, "seed": seed, "arm": "greedy", "error": str(exc)})
            k_pred = hs.predictor.predict([g["kept"] for g in k_search["groups"]])
            cell["uniform"] = bench.uniform_matched(hs, k_art, k_pred)
            cell["tp"] = bench.tp_matched(hs, k_model, k_art)
            cell["gate"] = bench.gate_matched(hs, k_model, k_art, seed)
            cell_arts, cell_rows = {"base": base_art}, []
            for arm, (model, info) in cell.items():
                name = f"{target}/{b}/{seed}/{arm}"
                cell_arts[name] = k_art if arm == "knapsack" else bench.compile(hs, model)
                acc = bench.finetune(model, seed)
                cell_rows.append({"target": target, "budget": b, "budget_ms": budget_ms, "seed": seed, "arm": arm,
                                  "name": name, "macs": macs(model, bench.shape), **acc, **info})
                log(f"      {arm}: top-1 {acc['top1_after_prune']:.4f} after prune (BN re-estimated) -> "
                    f"{acc['top1']:.4f} fine-tuned")
            # the cell's arms paired against the unpruned model (alternating bursts, fresh processes)
            ms = bench.paired(hs, cell_arts, args.rounds, "base")
            for r in cell_rows:
                r["measured_ms"] = ms[r["name"]]
                r["ratio_to_unpruned"] = bench.last_paired[r["name"]]["ratio"]
                r["ratio_interval"] = bench.last_paired[r["name"]]["ratio_interval"]
                r["baseline_ms_same_rounds"] = ms["base"]
            extra = bench.equal_training_epochs(k_search)
            cell_rows += bench.controls({arm: cell[arm][0] for arm in CONTROLS}, cell_rows, extra)
            cell_rows += bench.search_control(k_model, k_search, cell_rows, extra)
            rows += cell_rows
            base_ms.append(ms["base"])
            log("      measured: " + ", ".join(f"{r['arm']} {r['measured_ms']:.3f}" for r in cell_rows)
                + f", unpruned {ms['base']:.3f} ms")
            case = {"target": target, "runtime": profile["runtime"], "multiple": arm_round_to(hs), "table_s": table_s,
                    "grid": hs.multiple, "channel_block": hs.block_report(),
                    "anchor_ms": anchor, "baseline_final_ms": float(np.median(base_ms)), "calibration": fit,
                    "rows": rows, "baseline_macs": macs(bench.model, bench.shape)}
            if bench.checkpoint:
                bench.checkpoint(case)
    return case


def earlier_cases(path: Path, args) -> list[dict]:
    """The cases of an earlier run at ``path``, less the (target, budget) cells this run redoes."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    redo = {(t, b) for t in args.targets.split(",") for b in args.budget_list}
    kept = []
    for case in earlier.get("cases", []):
        rows = [r for r in case["rows"] if (case["target"], r["budget"]) not in redo]
        if rows:
            kept.append({**case, "rows": rows, "command": case.get("command", earlier["command"]),
                         "date": case.get("date", earlier["date"])})
    log(f"kept {sum(len(c['rows']) for c in kept)} rows of {path} (--merge)")
    return kept


def summarise(cases: list[dict], args, base_top1: float) -> list[dict]:
    """Mean ± std over seeds per (target, budget, arm), pooling the rows of every case of a target (one run's, or
    several runs' under ``--pool``)."""
    out = []
    for target in sorted({c["target"] for c in cases}):
        tcases = [c for c in cases if c["target"] == target]
        rows = [r | {"_macs0": c["baseline_macs"]} for c in tcases for r in c["rows"]]
        for b in sorted({r["budget"] for r in rows}, reverse=True):
            ref = [r["measured_ms"] for r in rows if r["budget"] == b and r.get("arm") == "knapsack"
                   and "measured_ms" in r]
            for arm in ARMS:
                rs = [r for r in rows if r["budget"] == b and r.get("arm") == arm and "top1" in r]
                if not rs:
                    continue
                top = [100 * r["top1"] for r in rs]
                lat = [r["measured_ms"] for r in rs]
                out.append({"target": target, "budget": b, "arm": arm, "seeds": len(rs),
                            "top1_mean": float(np.mean(top)), "top1_std": float(np.std(top, ddof=1)) if len(top) > 1 else 0.0,
                            "after_prune_mean": float(np.mean([100 * r["top1_after_prune"] for r in rs])),
                            "ms_mean": float(np.mean(lat)),
                            "ratio_mean": float(np.mean([r["ratio_to_unpruned"] for r in rs])),
                            "vs_knapsack_pct": 100 * (np.mean(lat) / np.mean(ref) - 1) if ref else None,
                            "macs_ratio": float(np.mean([r["macs"] / r["_macs0"] for r in rs])),
                            "baseline_top1": 100 * base_top1})
    return sorted(out, key=lambda s: (s["target"], -s["budget"], ARMS.index(s["arm"])))


def pool(paths: list[str]) -> dict:
    """``--pool``: one result from several runs' hw_search.json (each a directory or the file), so the summary is
    the mean ± std over all their seeds. The runs must share the model, input, data and fine-tune recipe, and no
    (target, budget, seed) cell may come from two runs: otherwise a ``ValueError`` says which."""
    runs = []
    for p in paths:
        path = Path(p).expanduser()
        path = path / "hw_search.json" if path.is_dir() else path
        if not path.is_file():
            raise ValueError(f"{path}: no hw_search.json there (give a run's --out directory or its JSON)")
        runs.append((path, json.loads(path.read_text())))
    first = runs[0][1]
    same = lambda r: (r.get("model", "resnet20"), r.get("input", "1x1x28x28"), r["args"].get("data"),
                      r["args"]["ft_epochs"], r["args"]["ft_lr"])
    cases, seen = [], {}
    for path, r in runs:
        if same(r) != same(first):
            raise ValueError(f"{path}: model/input/data/fine-tune {same(r)} differs from {runs[0][0]}'s {same(first)}; "
                             "only runs of one protocol pool")
        for case in r["cases"]:
            for cell in {(case["target"], row["budget"], row["seed"]) for row in case["rows"]}:
                if cell in seen:
                    raise ValueError(f"target {cell[0]} budget {cell[1]}x seed {cell[2]} is in both {seen[cell]} and "
                                     f"{path}; pool runs of different seeds")
                seen[cell] = path
            cases.append({**case, "command": case.get("command", r["command"]), "date": case.get("date", r["date"]),
                          "machine": r["machine"], "baseline_top1": r["baseline_top1"]})
    return {**{k: first[k] for k in ("model", "input", "args") if k in first},
            "command": "python bench/hw_search.py --pool " + ",".join(paths),
            "date": max(r["date"] for _, r in runs), "complete": all(r.get("complete", True) for _, r in runs),
            "wall_min": sum(r["wall_min"] for _, r in runs),
            "machine": "; ".join(sorted({r["machine"] for _, r in runs})),
            "baseline_top1": float(np.mean([r["baseline_top1"] for _, r in runs])),
            "pooled": [{"path": str(p), "command": r["command"], "date": r["date"], "baseline_top1": r["baseline_top1"],
                        "wall_min": r["wall_min"]} for p, r in runs],
            "cases": cases}


def plot(summary: list[dict], cases: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = sorted({s["target"] for s in summary})
    if not targets:
        return
    fig, axes = plt.subplots(1, len(targets), figsize=(6 * len(targets), 4.5), squeeze=False)
    for ax, target in zip(axes[0], targets):
        for arm, marker in zip(ARMS, "osD^v<>P"):
            pts = sorted((s for s in summary if s["target"] == target and s["arm"] == arm), key=lambda s: s["ratio_mean"])
            if not pts:
                continue  # an arm this run never had (search+ since the top-up): no empty legend entry
            ax.errorbar([p["ratio_mean"] for p in pts], [p["top1_mean"] for p in pts],
                        yerr=[p["top1_std"] for p in pts], marker=marker, linestyle="-", capsize=3, label=arm)
        case = next(c for c in cases if c["target"] == target)
        ax.scatter([1.0], [summary[0]["baseline_top1"]], marker="*", s=120, color="k", label="unpruned")
        ax.set_xlabel(f"measured latency / the unpruned model's, paired ({case['runtime']}, 1 thread)")
        ax.set_ylabel("top-1 % (Fashion-MNIST test, after the common fine-tune)")
        ax.set_title(f"{case.get('model', 'resnet20')}, target {target}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def pooled_header(result: dict) -> list[str]:
    """The head of a ``--pool`` report: which runs, their checkpoints' top-1, where and when."""
    from edgeprune.ui import markdown_table

    rows = [[f"`{p['path']}`", p["date"][:10], f"{100 * p['baseline_top1']:.2f}", f"{p['wall_min']:.0f}",
             f"`{p['command']}`"] for p in result["pooled"]]
    return [f"Pooled from {len(rows)} runs (`{result['command']}`); the summary is the mean ± std over all their seeds. "
            f"{result.get('model', 'resnet20')} at {result.get('input', '1x1x28x28')}, Fashion-MNIST; machines: "
            f"{result['machine']}. Each run's checkpoint and its top-1 (a retrained checkpoint is its own; every arm "
            "of a seed shares its run's):", "",
            markdown_table(["run", "date", "checkpoint top-1 %", "wall min", "command"], rows), ""]


def write_md(result: dict, path: Path) -> None:
    from edgeprune.ui import markdown_table

    a = result["args"]
    lines = ["# Budget search vs baselines at equal measured latency (issue 11)", "",
             *([] if result.get("complete", True) else
               ["**Partial: the run was still going (or was stopped) when this was written; only the cells below "
                "finished.**", ""]),
             *(pooled_header(result) if result.get("pooled") else [
                 f"Command{' of the latest run (each section below names its own run)' if len({c.get('command') for c in result['cases']}) > 1 else ''}: `{result['command']}`", "",
                 f"Date {result['date']}, wall time {result['wall_min']:.1f} min; machine: {result['machine']}; "
                 f"load average at start {result['load']}. Checkpoint `{a['weights']}` ({result.get('model', 'resnet20')} "
                 f"at {result.get('input', '1x1x28x28')}, Fashion-MNIST, top-1 {result['baseline_top1'] * 100:.2f}%)."]),
             f"Fine-tune for every arm: {a['ft_epochs']} epoch(s) of the "
             f"60k training images, SGD lr {a['ft_lr']} cosine, batch 128, no augmentation, after BN re-estimation "
             f"on 512 training images; the control arms uniform+ and tp+ (their arm's model) get on top of that "
             f"the training the search's winner had inside the search, at least its progressive schedule's (about "
             f"0.26 epoch; each control row's `extra_epochs` in the JSON; rows without them predate the controls), "
             f"and search+ a one-shot winner's shortfall. "
             f"Raw data: `hw_search.json`; plot: `hw_search.png`.", "",
             "## Summary (mean ± std over seeds)", ""]
    rows = [[s["target"], f"{s['budget']}x", s["arm"], s["seeds"], f"{s['top1_mean']:.2f} ± {s['top1_std']:.2f}",
             f"{s['after_prune_mean']:.2f}", f"{s['ms_mean']:.3f}", f"{s['ratio_mean']:.3f}",
             "" if s["vs_knapsack_pct"] is None else f"{s['vs_knapsack_pct']:+.1f}%", f"{s['macs_ratio']:.3f}"]
            for s in result["summary"]]
    lines += [markdown_table(["target", "budget", "arm", "seeds", "top-1 % after fine-tune", "top-1 % right after "
                              "pruning (BN re-estimated)", "measured ms", "x unpruned (paired)", "latency vs knapsack", "MACs share"], rows),
              "", "![top-1 vs measured latency](hw_search.png)", ""]
    for case in result["cases"]:
        lines += [f"## {case['target']} ({case['runtime']}): per run"
                  + (f", {case['date'][:10]}" if result.get("pooled") else ""), "",
                  f"Run: `{case.get('command', result['command'])}` ({case.get('date', result['date'])}"
                  + (f"; checkpoint top-1 {100 * case['baseline_top1']:.2f}%" if "baseline_top1" in case else "") + "). "
                  f"Channel multiple {case['multiple']}"
                  + (f" ({case['channel_block']['summary']})" if case.get("channel_block") else "")
                  + f"; latency table {case['table_s']:.0f} s; budget anchor "
                  f"(unpruned, the calibration's paired figure) {case['anchor_ms']:.3f} ms; unpruned in the final rounds "
                  f"{case['baseline_final_ms']:.3f} ms.", ""]
        rows = []
        for r in case["rows"]:
            if "error" in r:
                rows.append([f"{r['budget']}x", r["seed"], r["arm"], "", "", "", r["error"][:80]])
                continue
            extra = r.get("winner") or (f"ratio {r['ratio']:.2f}" if "ratio" in r else
                                        f"tick {r['tick']}, MACs {r['macs_share']:.3f}" if "tick" in r else "")
            rows.append([f"{r['budget']}x", r["seed"], r["arm"], f"{100 * r['top1_after_prune']:.2f}",
                         f"{100 * r['top1']:.2f}", f"{r['measured_ms']:.3f}", extra])
        lines += [markdown_table(["budget", "seed", "arm", "top-1 after prune", "top-1 fine-tuned", "measured ms",
                                  "winner / matched ratio"], rows), ""]
    path.write_text("\n".join(lines) + "\n")


def publish(result: dict, out: Path, args) -> None:
    """Summarise ``result``'s cases and write hw_search.json, .png and .md into ``out``."""
    result["summary"] = summarise(result["cases"], args, result["baseline_top1"])
    (out / "hw_search.json").write_text(json.dumps(result, indent=1, default=str))
    plot(result["summary"], result["cases"], out / "hw_search.png")
    write_md(result, out / "hw_search.md")


def winner_trained_images(search: dict) -> int:
    """Training images the search's winner saw inside the search (0 for a one-shot winner of a run before the
    finalists' weights were kept, or a row without its candidates)."""
    won = next((c for c in search.get("candidates") or [] if c["name"] == search.get("winner")), {})
    return int(won.get("trained_images") or 0)


def add_controls(args) -> int:
    """``--controls``: the control rows for every cell of hw_search.json that lacks them, or whose controls trained
    less than the search's winner did inside the search (redone at equal training); then the .md and .png."""
    path = Path(args.out) / "hw_search.json"
    result = json.loads(path.read_text())
    model, _, train_ds, test_ds = load_inputs(args)
    bench = Bench(args, model, train_ds, test_ds)
    targets = set(args.targets.split(","))
    for case in result["cases"]:
        if case["target"] not in targets:
            continue
        cells = sorted({(r["budget"], r["seed"]) for r in case["rows"] if r.get("arm") in CONTROLS and "top1" in r
                        and r["budget"] in args.budget_list})
        for b, seed in cells:
            rows = [r for r in case["rows"] if r["budget"] == b and r["seed"] == seed]
            extra = bench.equal_training_epochs(next((r for r in rows if r["arm"] == "knapsack"), {}))
            done = [r for r in rows if r.get("arm") in CONTROLS.values()]
            if done and all(r.get("extra_epochs", extra) >= extra - 1e-6 for r in done):
                continue
            if done:  # trained less than the search's winner did inside the search: not equal training, redo
                log(f"{case['target']} {b}x seed {seed}: controls had {min(r.get('extra_epochs', 0) for r in done):.3f} "
                    f"extra epochs, the search's winner {extra:.3f}: redone")
                gone = {id(r) for r in done}
                case["rows"] = [r for r in case["rows"] if id(r) not in gone]
            else:
                log(f"{case['target']} {b}x seed {seed}: controls")
            arms = {r["arm"]: bench.rebuild(r, case["multiple"]) for r in rows if r.get("arm") in CONTROLS}
            measured = [r for r in rows if "top1" in r and r.get("arm") not in CONTROLS.values()]
            case["rows"] += bench.controls(arms, measured, extra)
        path.write_text(json.dumps(result, indent=1, default=str))  # a stopped run keeps its finished targets
    publish(result, Path(args.out), args)
    return 0


def load_inputs(args):
    """The checkpoint's model (any ``edgeprune train`` checkpoint: it holds its architecture), its spec, and the
    train and test sets at ``--image-size``, loaded as ``edgeprune build`` loads them (a checkpoint that does not
    fit the data is refused by ``load_model``)."""
    from edgeprune.data import load_dataset
    from edgeprune.loading import load_model

    train_ds, test_ds = (load_dataset(args.data, split, image_size=args.image_size) for split in ("train", "test"))
    model, spec = load_model(None, args.weights, num_classes=train_ds.num_classes, in_channels=train_ds.channels,
                             data=train_ds.name)
    return model, spec, train_ds, test_ds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", help="trained checkpoint (edgeprune train's model.pt, any zoo model: it holds its "
                                      "architecture); required unless --rewrite")
    ap.add_argument("--data", default="fashion-mnist",
                    help="dataset, as edgeprune train's --data (the checkpoint's own); default: fashion-mnist")
    ap.add_argument("--image-size", type=int, help="resize the images (as the checkpoint was trained, e.g. 96 for "
                                                   "mobilenet_v2); default: the data's own size")
    ap.add_argument("--targets", default="x86",
                    help="comma-separated targets, each a cell of its own (x86: OpenVINO; arm64: ncnn under the arm64 "
                         "profile); default: x86")
    ap.add_argument("--budgets", default="0.7,0.5,0.35",
                    help="comma-separated latency budgets as shares of the unpruned model's measured p50; "
                         "default: 0.7,0.5,0.35")
    ap.add_argument("--seeds", default="0,1",
                    help="comma-separated seeds (the search's randomness and every arm's fine-tuning order); "
                         "default: 0,1")
    ap.add_argument("--ft-epochs", type=float, default=0.15,
                    help="the common fine-tune every arm gets, in epochs of the training set; default: 0.15")
    ap.add_argument("--ft-lr", type=float, default=0.01,
                    help="the common fine-tune's SGD learning rate (cosine schedule); default: 0.01")
    ap.add_argument("--rounds", type=int, default=3,
                    help="fresh processes of the final paired latency check per cell; default: 3")
    ap.add_argument("--channel-block", choices=("on", "off"), default="on",
                    help="use the runtime's channel block read off the latency table, as a build without --round-to "
                         "does (every arm prunes on the same grid); off: the profile's multiple")
    ap.add_argument("--out", help="where hw_search.json, .md and .png go (default bench/results; required with --pool)")
    ap.add_argument("--rewrite", action="store_true",
                    help="run nothing: write hw_search.md and .png again from hw_search.json in --out")
    ap.add_argument("--controls", action="store_true",
                    help="run no search: add the uniform+ / tp+ control rows (longer fine-tune, see CONTROLS) to "
                         "the --targets / --budgets cells of hw_search.json in --out that lack them or whose controls "
                         "trained less than the search's winner, rebuilding those arms' models")
    ap.add_argument("--pool", metavar="DIR,DIR,...",
                    help="run nothing: pool earlier runs' hw_search.json (their --out directories) into one report "
                         "in --out, mean ± std over all their seeds (runs of other seeds, same model and fine-tune)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the cells of an earlier hw_search.json in --out that this run does not redo "
                         "(other targets or budgets); each section of the report names the run it comes from")
    args = ap.parse_args()
    if not args.weights and not (args.rewrite or args.pool):
        ap.error("--weights is required")
    if args.pool and not args.out:
        ap.error("--pool needs --out DIR (a new directory: the pooled report must not overwrite a run's own)")
    args.out = args.out or str(REPO / "bench" / "results")
    args.budget_list = [float(b) for b in args.budgets.split(",")]
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    if args.pool:
        try:
            result = pool(args.pool.split(","))
        except ValueError as e:
            print(f"hw_search: --pool: {e}", file=sys.stderr)
            return 2
        except KeyError as e:
            print(f"hw_search: --pool: a file lacks the field {e}: give the hw_search.json of bench/hw_search.py runs",
                  file=sys.stderr)
            return 2
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        publish(result, out, args)
        log(f"wrote {out}/hw_search.md ({len(result['pooled'])} runs pooled)")
        return 0
    if args.rewrite:
        publish(json.loads((Path(args.out) / "hw_search.json").read_text()), Path(args.out), args)
        return 0
    from edgeprune.train import evaluate

    if args.controls:
        return add_controls(args)

    started = time.time()
    load = os.getloadavg()
    model, spec, train_ds, test_ds = load_inputs(args)
    base_top1 = evaluate(model.eval(), test_ds, progress=False)
    shape = f"1x{train_ds.channels}x{train_ds.image_size}x{train_ds.image_size}"
    log(f"{spec['name']} at {shape}: baseline top-1 {100 * base_top1:.2f}%")
    bench = Bench(args, model, train_ds, test_ds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from edgeprune.measure.env import cpu_model

    cpu = cpu_model() or "?"
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    cases: list[dict] = []
    command = "python bench/hw_search.py " + " ".join(sys.argv[1:])
    kept = earlier_cases(out / "hw_search.json", args) if args.merge else []

    def write(partial: list[dict], done: bool) -> None:
        for case in partial:
            case.update(command=command, date=date, model=spec["name"], input=shape)
        publish({"command": command, "date": date, "complete": done, "wall_min": (time.time() - started) / 60,
                 "model": spec["name"], "input": shape,
                 "machine": f"{cpu}, {os.cpu_count()} cores, {platform.python_version()}",
                 "load": [round(x, 1) for x in load], "baseline_top1": base_top1,
                 "args": {k: v for k, v in vars(args).items()}, "cases": kept + partial}, out, args)

    for t in args.targets.split(","):
        bench.checkpoint = lambda case: write(cases + [case], False)
        cases.append(run_target(bench, t))
    write(cases, True)
    log(f"wrote {out}/hw_search.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
