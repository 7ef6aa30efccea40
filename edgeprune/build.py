"""``edgeprune build``: prune -> fine-tune -> export -> compile -> gate -> measure -> report.

Invariants:
- Every input is validated before any long step (target, runtime, precision, model,
  weights, data, ratio, output folder).
- The build happens in a hidden staging folder beside ``--out`` that is renamed to ``--out``
  only when the whole build succeeded; a failure removes it, so a folder named ``--out``
  always holds a complete, valid build (``report.json`` written last).
- Baseline and pruned artifacts are measured in rounds, for at least ``rounds`` rounds and then until
  the build's question is decided at ``confidence`` (at most ``max_rounds``). Here a round is one fresh
  process timing both in alternating short bursts (``protocol.measure_paired_rounds``: a shared machine's
  load phases cancel out of the ratio pruned/baseline); on a device, A B A B in fresh processes. The
  question: with a budget, "is the pruned model within it?" (its p50 vs a budget in ms, or the paired
  per-round ratio pruned/baseline vs a share such as 0.6x); without, "is it faster than the baseline?". A budget "met" exits 0, "missed" 1, "undecided" 3 (``build_checks``).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from edgeprune import __version__
from edgeprune.data import calibration_batch, check_count, load_dataset
from edgeprune.deploy_check import compile_checked, make_holdout
from edgeprune.build_checks import (BuildGateFailed, BuildUndecided, check_gates, check_ranges,  # noqa: F401 (API)
                                    gates)
from edgeprune.errors import GateFailed, UserInputError
from edgeprune.export import export_onnx, torch_outputs
from edgeprune.loading import check_out_dir, check_ratio, count_flops_params, load_model
from edgeprune.models.checkpoint import save_checkpoint
from edgeprune.measure.decide import Question, describe
from edgeprune.measure.protocol import MeasureSettings, RoundPolicy, measure_paired_rounds
from edgeprune.profiles import channel_multiple, load_profile, resolve_threads
from edgeprune.prune import check_options, prune_model
from edgeprune.prune.base import PruneContext
from edgeprune.prune.graph import kept_layers
from edgeprune.report import write_report
from edgeprune.prune.bn import recalibrate_bn
from edgeprune.search.settings import SearchSettings
from edgeprune.search.driver import parse_budget, prune_to_budget
from edgeprune.targets import require_runtime
from edgeprune.targets.base import staging_dir, write_json_atomic
from edgeprune.train import evaluate, train
from edgeprune.ui import Steps, info

BN_IMAGES = 512  # training images BN statistics are re-estimated on after pruning
BAR_LOWEST_SHARE = 0.15  # the accuracy-bar search never probes below this share of the baseline's latency
BAR_RESOLUTION = 0.04  # it stops when the passing and failing shares are this close


@dataclass
class BuildConfig:
    """Everything ``edgeprune build`` needs; the CLI fills it from its flags."""

    target: str
    data: str
    out: str
    model: str | None = None
    weights: str | None = None
    method: str | None = None  # None: taylor_bn for the knapsack budget search, else l1
    ratio: float | None = None  # None: 0.5, or the fastest model within --max-accuracy-drop
    allocation: str = "global"  # --ratio pruning: global (ranked across layers) or uniform (same share per layer)
    search: str = "knapsack"  # budget search strategy: knapsack or greedy
    search_steps: int = SearchSettings.steps  # the search's defaults live in SearchSettings
    search_step_batches: int = SearchSettings.step_batches
    search_candidates: int = SearchSettings.random_candidates
    max_cut: float = SearchSettings.max_cut
    search_holdout: int = SearchSettings.holdout_images
    search_refits: int = SearchSettings.refits
    search_near: float = SearchSettings.near
    search_finalists: int = SearchSettings.finalists
    search_finalist_batches: int = SearchSettings.finalist_batches
    search_calibration: int = SearchSettings.calibration_mixed
    search_progressive_steps: int = SearchSettings.progressive_steps
    search_settle: float = SearchSettings.settle
    search_top_up: bool = SearchSettings.top_up
    precision: str | None = None
    round_to: int | None = None
    finetune_epochs: float = 1.0
    lr: float = 0.01
    batch_size: int = 128
    augment: bool = False  # random crop + flip; helps long fine-tunes, hurts one-epoch ones
    kd_alpha: float = 0.0  # weight of the distillation loss from the unpruned teacher (0 = off)
    kd_temperature: float = 4.0
    image_size: int | None = None
    threads: int | None = None
    rounds: int = 3  # minimum interleaved rounds
    max_rounds: int | None = None  # cap on the rounds (None: 15, or ``rounds`` if more)
    confidence: float = 0.95  # at which the build's latency question is decided
    min_seconds: float = 2.0
    warmup_s: float = 1.0
    holdout: int = 500
    calib: int = 300
    eval_limit: int | None = None
    force: bool = False
    trust_checkpoint: bool = False
    progress: bool = True
    seed: int = 0
    budget: str | None = None  # "8" / "8ms" (milliseconds) or "0.5x" (share of the baseline)
    budget_attempts: int = 3
    device: Any = None  # a connected edgeprune.remote.RemoteDevice: compile and measure there
    flops_target: float | None = None  # keep at most this share of MACs (methods that iterate, e.g. gate)
    method_options: dict[str, Any] = field(default_factory=dict)
    keep_layers: tuple[str, ...] = ()  # layers (or prefixes) never pruned
    min_width: float = 0.1  # every pruned group keeps at least this share of its channels
    max_accuracy_drop: float | None = None  # accuracy bar, in percentage points of top-1
    bar_probes: int = 4  # budget searches the fastest-within-the-bar mode may run

    def __post_init__(self) -> None:
        # no ratio and no budget with an accuracy bar: look for the fastest model within the bar
        self.fastest_within_bar = self.ratio is None and not self.budget and self.max_accuracy_drop is not None
        if self.ratio is None:
            self.ratio = 0.5
        if self.method is None:
            self.method = "taylor_bn" if (self.budget or self.fastest_within_bar) and self.search == "knapsack" else "l1"

    @classmethod
    def from_args(cls, args: Any) -> "BuildConfig":
        """A config from parsed command-line flags (each flag's dest is the field's name)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls)
                  if f.name not in ("device", "progress") and getattr(args, f.name, None) is not None}
        values["progress"] = not getattr(args, "no_progress", False)
        values["method_options"] = dict(getattr(args, "method_options", None) or [])
        values["keep_layers"] = tuple(getattr(args, "keep_layers", None) or ())
        return cls(**values)


def _validate(cfg: BuildConfig, needs_runtime: bool = True) -> dict[str, Any]:
    profile = load_profile(cfg.target)
    check_ranges(cfg)
    check_ratio(cfg.ratio)
    check_options(cfg.method, cfg.method_options)
    check_out_dir(cfg.out, cfg.force)
    if needs_runtime and isinstance(profile.get("emulate"), dict):
        raise UserInputError(f"target {profile['name']} is emulated: it checks correctness, it has no latency to "
                             "build for", f"build for a real target, then check the result with 'edgeprune bench "
                             f"OUT/onnx/pruned.onnx --targets {profile['name']}'")
    if needs_runtime and cfg.device is None:
        require_runtime(profile["runtime"])
    precision = cfg.precision or profile["default_precision"]
    if precision not in profile["precisions"]:
        raise UserInputError(f"target {profile['name']} does not offer precision {precision!r}",
                             f"choose one of: {', '.join(profile['precisions'])}")
    if cfg.budget is not None:
        parse_budget(cfg.budget)
    if cfg.weights is not None and not Path(cfg.weights).is_file():
        raise UserInputError(f"weights file not found: {cfg.weights}", "pass the checkpoint written by 'edgeprune train'")
    if needs_runtime and cfg.device is not None:
        _check_device(cfg.device, profile["runtime"])
    return {**profile, "precision": precision}


def _check_device(device: Any, runtime: str) -> None:
    """Reach the remote device before any long step, and check it has the target's runtime."""
    from edgeprune.remote.checked import require_device_runtime

    require_device_runtime(device, runtime)


def _describe_model(model, input_shape, accuracy: float | None) -> dict[str, Any]:
    macs, params = count_flops_params(model, input_shape)
    return {"accuracy": accuracy, "flops": macs, "params": params}


def search_settings(cfg: BuildConfig) -> SearchSettings:
    return SearchSettings(strategy=cfg.search, steps=cfg.search_steps, step_batches=cfg.search_step_batches,
                          random_candidates=cfg.search_candidates, max_cut=cfg.max_cut,
                          holdout_images=cfg.search_holdout, refits=cfg.search_refits, near=cfg.search_near,
                          finalists=cfg.search_finalists, finalist_batches=cfg.search_finalist_batches,
                          calibration_mixed=cfg.search_calibration, progressive_steps=cfg.search_progressive_steps,
                          settle=cfg.search_settle, top_up=cfg.search_top_up,
                          batch_size=min(cfg.batch_size, 128), seed=cfg.seed, channel_block=cfg.round_to is None)


def _prune(cfg: BuildConfig, ctx: dict[str, Any], steps: Steps, budget: str | None,
           state: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any] | None]:
    model, train_ds = ctx["model"], ctx["train_ds"]
    example = torch.zeros(*ctx["input_shape"])
    if budget:
        steps.start(f"hardware-aware search ({cfg.search}, {cfg.method} importance) for budget {budget} on "
                    f"{ctx['profile']['name']}")
        pctx = PruneContext(example_inputs=example, round_to=ctx["round_to"], train_ds=train_ds,
                            min_ratio=cfg.min_width, ignored_layers=tuple(cfg.keep_layers),
                            progress=cfg.progress, seed=cfg.seed, options={"method": cfg.method, **cfg.method_options})
        remote = {"device": ctx["device"]} if ctx.get("device") is not None else {}  # table and models there
        return prune_to_budget(model, example, ctx["profile"], budget, cfg.method, pctx, ctx["threads"], ctx["calib"],
                               cfg.budget_attempts, cfg.progress, search_settings(cfg), state=state, **remote)
    steps.start(f"pruning ({cfg.method}, ratio {cfg.ratio}, {cfg.allocation} allocation, channels rounded to "
                f"{ctx['round_to']})")
    result = prune_model(model, example, cfg.method, cfg.ratio, ctx["round_to"], train_ds=train_ds,
                         progress=cfg.progress, seed=cfg.seed, flops_target=cfg.flops_target,
                         min_ratio=cfg.min_width, ignored_layers=tuple(cfg.keep_layers), allocation=cfg.allocation,
                         **cfg.method_options)
    return result, None


def _recover(cfg: BuildConfig, ctx: dict[str, Any], steps: Steps, result: Any, search: dict[str, Any] | None,
             base_acc: float, test: bool = True) -> dict[str, Any]:
    """BN statistics re-estimated, then fine-tuned; test top-1 before and after (``test=False``: not evaluated,
    the caller judges the model on other images; both figures are then None)."""
    model, train_ds, test_ds = ctx["model"], ctx["train_ds"], ctx["test_ds"]
    pruned = result.model
    recalibrate_bn(pruned, train_ds, BN_IMAGES, seed=cfg.seed)  # the full network's BN statistics are wrong for it
    acc_before = evaluate(pruned, test_ds, progress=cfg.progress, limit=cfg.eval_limit) if test else None
    steps.done(f"{result.summary()['channels_before']} -> {result.summary()['channels_after']} channels"
               + (f", top-1 before fine-tuning (BN re-estimated) {acc_before:.4f}" if test else ""))
    kd = f", distilling from the unpruned model (alpha {cfg.kd_alpha}, T {cfg.kd_temperature})" if cfg.kd_alpha else ""
    steps.start(f"fine-tuning for {cfg.finetune_epochs} epoch(s){kd}")
    history = {}
    if cfg.finetune_epochs > 0:
        teacher = model if cfg.kd_alpha > 0 else None  # knowledge distillation from the unpruned model
        history = train(pruned, train_ds, epochs=cfg.finetune_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                        augment=cfg.augment, progress=cfg.progress, desc="fine-tune", seed=cfg.seed,
                        teacher=teacher, kd_alpha=cfg.kd_alpha, kd_temperature=cfg.kd_temperature)
    pruned.eval()
    acc_after = evaluate(pruned, test_ds, progress=cfg.progress, limit=cfg.eval_limit) if test else None
    steps.done(f"top-1 {acc_after:.4f}" if test else "done")
    return {"pruned": pruned, "prune": result.summary(), "finetune": history, "search": search,
            "baseline_acc": base_acc, "acc_before_ft": acc_before, "acc_after_ft": acc_after}


def prune_and_finetune(cfg: BuildConfig, ctx: dict[str, Any], steps: Steps) -> dict[str, Any]:
    steps.start("evaluating the baseline")
    base_acc = evaluate(ctx["model"], ctx["test_ds"], progress=cfg.progress, limit=cfg.eval_limit)
    steps.done(f"top-1 {base_acc:.4f}")
    if cfg.fastest_within_bar:
        return fastest_within_bar(cfg, ctx, steps, base_acc)
    result, search = _prune(cfg, ctx, steps, cfg.budget)
    return _recover(cfg, ctx, steps, result, search, base_acc)


def fastest_within_bar(cfg: BuildConfig, ctx: dict[str, Any], steps: Steps, base_acc: float) -> dict[str, Any]:
    """``--max-accuracy-drop`` without a budget or ratio: bisect the latency budget (a share of the baseline's
    measured latency) for the fastest model whose fine-tuned top-1 stays within the bar.

    Each probe is a whole budget search + fine-tune; the latency table, the predictor and its measurements are
    shared between probes. Probes are judged on held-out *training* images (``--search-holdout`` of them, never
    fine-tuned on), against the unpruned model's top-1 on the same images: the test set decides nothing here, so
    the build's accuracy gate on it stays an independent check of the chosen model. The fastest passing probe is
    returned; when none passes, the least pruned one is, and the accuracy gate then fails with every probe's
    figures in the report.
    """
    from edgeprune.search.arbitrate import split_train

    fit_ds, held_ds = split_train(ctx["train_ds"], cfg.search_holdout, cfg.seed + 1)
    probe_ctx = {**ctx, "train_ds": fit_ds}
    base_held = evaluate(ctx["model"], held_ds, progress=False)
    info(f"      probes are judged on {len(held_ds)} held-out training images (unpruned top-1 {base_held:.4f} there)")
    state: dict[str, Any] = {}
    low, high = BAR_LOWEST_SHARE, 1.0   # highest failing share, lowest passing share
    share, probes, best, least = 0.5, [], None, None
    for n in range(1, cfg.bar_probes + 1):
        info(f"      accuracy-bar probe {n}/{cfg.bar_probes}: budget {share:.3f}x of the baseline's latency")
        try:
            result, search = _prune(cfg, probe_ctx, steps, f"{share:.4f}x", state)
        except (GateFailed, UserInputError) as exc:  # out of the search's reach at this share
            probes.append({"share": share, "passed": False, "error": str(exc)})
            low = share
        else:
            pf = _recover(cfg, probe_ctx, steps, result, search, base_acc, test=False)
            held = evaluate(pf["pruned"], held_ds, progress=False)
            drop = 100.0 * (base_held - held)
            passed = drop <= cfg.max_accuracy_drop
            probes.append({"share": share, "passed": passed, "holdout_top1": held, "drop_points": drop,
                           "measured_ms": search["measured_ms"]})
            info(f"      probe {n}: held-out top-1 {held:.4f} ({-drop:+.2f} points), "
                 f"{'within' if passed else 'outside'} the {cfg.max_accuracy_drop}-point bar")
            if passed and (best is None or share < best[0]):
                best = (share, pf)
            if least is None or share > least[0]:
                least = (share, pf)
            if passed:
                high = share
            else:
                low = share
        if high - low < BAR_RESOLUTION:
            break
        share = (low + high) / 2
    chosen = best or least
    if chosen is None:
        raise GateFailed(f"no model within the {cfg.max_accuracy_drop}-point accuracy bar: every probe failed "
                         f"({'; '.join(p.get('error', '') for p in probes)})",
                         "raise --max-accuracy-drop, or prune by --ratio / --budget-ms")
    pf = chosen[1]
    steps.start("evaluating the chosen model on the test set")
    pf["acc_after_ft"] = evaluate(pf["pruned"], ctx["test_ds"], progress=cfg.progress, limit=cfg.eval_limit)
    steps.done(f"top-1 {pf['acc_after_ft']:.4f}")
    pf["search"] = {**pf["search"], "bar_search": {
        "max_accuracy_drop": cfg.max_accuracy_drop, "judged_on": "held-out training images",
        "holdout_images": len(held_ds), "baseline_holdout_top1": base_held, "probes": probes,
        "chosen_share": chosen[0], "found": best is not None}}
    return pf


def _deploy(stage: Path, cfg: BuildConfig, profile: dict[str, Any], ctx: dict[str, Any],
            models: dict[str, torch.nn.Module], steps: Steps) -> dict[str, dict[str, Any]]:
    steps.start(f"exporting ONNX and compiling for {profile['name']} ({profile['runtime']} {profile['precision']})")
    calib = ctx["calib"]
    rows = {}
    for name, model in models.items():
        holdout = make_holdout(ctx["test_ds"], ctx["holdout"], lambda x, m=model: torch_outputs(m, x), cfg.seed)
        onnx_path = stage / "onnx" / f"{name}.onnx"
        exported = export_onnx(model, ctx["input_shape"], onnx_path, check_inputs=holdout.x[:32])
        if ctx.get("device") is not None:
            from edgeprune.remote.checked import remote_compile_checked

            row = remote_compile_checked(ctx["device"], onnx_path, profile, profile["precision"],
                                         stage / "artifacts" / name, holdout, calib, _settings(cfg, ctx), measure=False)
        else:
            row = compile_checked(onnx_path, profile, profile["precision"], stage / "artifacts" / name,
                                  holdout, calib, ctx["threads"])
        row["onnx"] = {**exported, "path": str(onnx_path.relative_to(stage))}
        if row["status"] != "ok":
            raise GateFailed(f"{name} model: {row['status']} on {profile['name']} {profile['precision']}: {row['reason']}")
        row["artifact"] = str(Path(row["artifact"]).relative_to(stage))
        rows[name] = row
    steps.done(", ".join(f"{n} {r['size_mb']:.2f} MB, holdout top-1 {r['accuracy']:.4f}" for n, r in rows.items()))
    return rows


def _settings(cfg: BuildConfig, ctx: dict[str, Any]) -> MeasureSettings:
    return MeasureSettings(threads=ctx["threads"], warmup_s=cfg.warmup_s, min_seconds=cfg.min_seconds)


def question(cfg: BuildConfig) -> Question:
    """The build's latency question: within the budget (ms, or share of the baseline), else faster than it."""
    if cfg.budget:
        value, relative = parse_budget(cfg.budget)
        if relative:
            return Question.within_share("pruned", "baseline", value)
        return Question.within_ms("pruned", value)
    return Question.faster("pruned", "baseline")


def _measure(stage: Path, cfg: BuildConfig, ctx: dict[str, Any], rows: dict[str, dict], steps: Steps) -> dict:
    where = f"on {ctx['device'].label}" if ctx.get("device") is not None else "here"
    policy = RoundPolicy.resolve(cfg.rounds, cfg.max_rounds, cfg.confidence)
    asked = question(cfg)
    how = ("fresh process each" if ctx.get("device") is not None else
           "each round one fresh process timing both models in alternating bursts")
    steps.start(f"measuring latency {where}: {policy.min_rounds} to {policy.max_rounds} rounds until "
                f"'{asked.text()}' is decided at {100 * policy.confidence:g}% confidence, {ctx['threads']} thread(s), "
                f"{how}")
    artifacts = {n: stage / r["artifact"] for n, r in rows.items()}
    if ctx.get("device") is not None:
        from edgeprune.remote.remote_target import remote_measure_interleaved

        results = remote_measure_interleaved(ctx["device"], artifacts, _settings(cfg, ctx), policy.min_rounds,
                                             question=asked, max_rounds=policy.max_rounds,
                                             confidence=policy.confidence)
    else:
        results = measure_paired_rounds(artifacts, _settings(cfg, ctx), rounds=policy.min_rounds,
                                        reference="baseline", progress=cfg.progress, question=asked,
                                        max_rounds=policy.max_rounds, confidence=policy.confidence)
    steps.done(", ".join(f"{n} p50 {r['latency']['p50_ms']:.3f} ms" for n, r in results.items())
               + (f"; {describe(results.decision)}" if results.decision else ""))
    return results


def _entry(desc: dict, row: dict, meas: dict, profile: dict) -> dict[str, Any]:
    lat = meas["latency"]
    return {**desc, "target": profile["name"], "runtime": profile["runtime"], "precision": profile["precision"],
            "latency": {k: lat[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms")},
            "throughput_ips": lat.get("throughput_ips"), "latency_rounds_p50_ms": meas.get("rounds"),
            "p50_ms_median": meas.get("p50_ms_median"), "p50_interval_ms": meas.get("p50_interval_ms"),
            "latency_statistic": meas.get("statistic", "p50 of the median round, one artifact per fresh process"),
            "paired": meas.get("paired"),
            "peak_rss_mb": meas["peak_rss_mb"], "size_mb": row["size_mb"], "artifact": row["artifact"],
            "onnx": row["onnx"], "parity": row["parity"], "inspect": row.get("inspect")}


def prepare(cfg: BuildConfig, steps: Steps,
            needs_runtime: bool = True) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Validate everything and load data and model: (profile, context, model spec).

    ``needs_runtime``: the target's runtime must work here (or on the device) — false for pruning
    by ratio, which compiles nothing.
    """
    steps.start(f"checking inputs (target {cfg.target})")
    profile = _validate(cfg, needs_runtime)
    torch.manual_seed(cfg.seed)
    train_ds = load_dataset(cfg.data, "train", image_size=cfg.image_size)
    test_ds = load_dataset(cfg.data, "test", image_size=cfg.image_size)
    holdout = check_count(cfg.holdout, len(test_ds), "--holdout-images", "held-out test images")
    model, spec = load_model(cfg.model, cfg.weights, num_classes=train_ds.num_classes,
                             in_channels=train_ds.channels, trust=cfg.trust_checkpoint, data=train_ds.name)
    kept_layers(model, cfg.keep_layers)  # an unknown --keep name fails now, not after the baseline's evaluation
    if cfg.weights is None:
        info("warning: no --weights given: pruning an untrained model, accuracies are meaningless")
    ctx = {"model": model, "train_ds": train_ds, "test_ds": test_ds, "holdout": holdout,
           "input_shape": (1, train_ds.channels, train_ds.image_size, train_ds.image_size),
           "round_to": cfg.round_to if cfg.round_to is not None else channel_multiple(profile),
           "threads": resolve_threads(profile, cfg.threads), "profile": profile, "device": cfg.device,
           "calib": calibration_batch(train_ds, cfg.calib, seed=cfg.seed) if profile["precision"] == "int8" else None}
    steps.done(f"{spec.get('name')} on {train_ds.name} {list(ctx['input_shape'])}, "
               f"{profile['runtime']} {profile['precision']}, {ctx['threads']} thread(s)")
    return profile, ctx, spec


def run_build(cfg: BuildConfig) -> dict[str, Any]:
    """Run the whole build; returns the report (also written to ``cfg.out``)."""
    started = time.time()
    steps = Steps(7, quiet=not cfg.progress)
    profile, ctx, spec = prepare(cfg, steps)
    model = ctx["model"]
    with staging_dir(cfg.out, must_contain="report.json") as stage:
        pf = prune_and_finetune(cfg, ctx, steps)
        rows = _deploy(stage, cfg, profile, ctx, {"baseline": model, "pruned": pf["pruned"]}, steps)
        meas = _measure(stage, cfg, ctx, rows, steps)
        report = _assemble(cfg, profile, ctx, spec, pf, rows, meas)
        report["seconds"] = round(time.time() - started, 1)
        steps.start("writing the report")
        save_checkpoint(stage / "pruned.pt", pf["pruned"], spec, {"report": "report.json"})
        write_report(stage, report)
    steps.done(str(cfg.out))
    check_gates(report)
    return report


def _search_outcome(search: dict[str, Any] | None, gate: dict[str, Any] | None) -> dict[str, Any] | None:
    """The search's record plus the final build's verdict on the budget (``build_checks.budget_gate``)."""
    if not search or gate is None:
        return search or None
    return {**search, "final_measured_ms": gate["measured_ms"], "final_interval": gate["interval"],
            "final_unit": gate["unit"], "final_rounds": gate["rounds"], "decision": gate["decision"],
            "met": gate["decision"] == "met"}


def _assemble(cfg, profile, ctx, spec, pf, rows, meas) -> dict[str, Any]:
    shape = ctx["input_shape"]
    base = _entry(_describe_model(ctx["model"], shape, pf["baseline_acc"]), rows["baseline"], meas["baseline"], profile)
    pruned = _entry(_describe_model(pf["pruned"], shape, pf["acc_after_ft"]), rows["pruned"], meas["pruned"], profile)
    pruned["accuracy_before_finetune"] = pf["acc_before_ft"]
    b50, p50 = base["latency"]["p50_ms"], pruned["latency"]["p50_ms"]
    decision = getattr(meas, "decision", None)
    build_gates = gates(cfg, pf["search"], base, pruned, decision)
    search = _search_outcome(pf["search"], build_gates.get("latency_budget"))
    return {
        "edgeprune_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {**{f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "device"},
                   "device": cfg.device.label if cfg.device is not None else None},
        "target": {"name": profile["name"], "runtime": profile["runtime"], "precision": profile["precision"],
                   "threads": ctx["threads"], "channel_multiple": ctx["round_to"]},
        "model": {"spec": spec, "input_shape": list(shape)},
        "data": {"name": ctx["train_ds"].name, "train": len(ctx["train_ds"]), "test": len(ctx["test_ds"])},
        "prune": pf["prune"], "finetune": pf["finetune"], "search": search,
        "gates": build_gates,
        "measurement": _measurement(cfg, meas, decision),
        "baseline": base, "pruned": pruned,
        "comparison": {"speedup_p50": b50 / p50, "latency_change_pct": 100.0 * (p50 - b50) / b50,
                       "accuracy_change": pruned["accuracy"] - base["accuracy"],
                       "flops_ratio": pruned["flops"] / base["flops"], "params_ratio": pruned["params"] / base["params"],
                       "size_ratio": pruned["size_mb"] / base["size_mb"],
                       "paired_ratio_median": _paired_ratio(base, pruned),
                       "noise": {n: m.get("noise") for n, m in meas.items()}},
        "environment": meas["baseline"].get("environment"),
    }


def _paired_ratio(base: dict, pruned: dict) -> float | None:
    """Median over rounds of pruned/baseline p50 in the same round (noise common to a round cancels)."""
    b, p = base.get("latency_rounds_p50_ms") or [], pruned.get("latency_rounds_p50_ms") or []
    return statistics.median(x / y for x, y in zip(p, b)) if b and len(b) == len(p) else None


def _measurement(cfg: BuildConfig, meas: dict, decision: dict[str, Any] | None) -> dict[str, Any]:
    """How the final latencies were measured and what the rounds decided."""
    policy = RoundPolicy.resolve(cfg.rounds, cfg.max_rounds, cfg.confidence)
    return {"min_rounds": policy.min_rounds, "max_rounds": policy.max_rounds, "confidence": policy.confidence,
            "rounds": getattr(meas, "rounds_taken", None) or len(next(iter(meas.values())).get("rounds") or []),
            "question": decision["question"] if decision else None, "answer": decision,
            "sentence": describe(decision) if decision else None}


def run_prune(cfg: BuildConfig) -> dict[str, Any]:
    """Prune (by ratio, FLOPs target or latency budget) and fine-tune, no deployment.

    Writes ``cfg.out``/pruned.pt (pickle-free checkpoint) and prune.json (method, channels per
    group, accuracy before/after fine-tuning, MACs and params, the budget search if any); the
    folder appears only when both are complete. The target's runtime is needed only for a budget.
    """
    steps = Steps(4, quiet=not cfg.progress)
    profile, ctx, spec = prepare(cfg, steps, needs_runtime=bool(cfg.budget))
    with staging_dir(cfg.out, must_contain="prune.json") as stage:
        pf = prune_and_finetune(cfg, ctx, steps)
        shape = ctx["input_shape"]
        base_macs, base_params = count_flops_params(ctx["model"], shape)
        macs, params = count_flops_params(pf["pruned"], shape)
        summary = {"model": spec, "target": profile["name"], "input_shape": list(shape), "prune": pf["prune"],
                   "channel_multiple": ctx["round_to"],
                   "accuracy": {"baseline": pf["baseline_acc"], "before_finetune": pf["acc_before_ft"],
                                "after_finetune": pf["acc_after_ft"]},
                   "flops": {"baseline": base_macs, "pruned": macs},
                   "params": {"baseline": base_params, "pruned": params},
                   "search": pf["search"], "finetune": pf["finetune"]}
        save_checkpoint(stage / "pruned.pt", pf["pruned"], spec, {"prune": "prune.json"})
        write_json_atomic(stage / "prune.json", summary)
    return summary
