"""``edgeprune bench``: one model across runtimes and precisions, in one table.

MODEL is an ONNX file or a build folder (its ``onnx/pruned.onnx``). The reference for
parity is the ONNX model run by ONNX Runtime in fp32 (which ``export`` checked against
PyTorch). Invariant: every (target, precision) pair yields exactly one row whose status is
ok / unsupported / compile failed / parity failed, with the reason; only ok rows are
measured, all of them interleaved round by round in fresh processes at one thread count,
for at least ``rounds`` rounds and then until "is the fastest row faster than the runner-up?"
is decided at ``confidence`` (at most ``max_rounds``). Each row shows its p50 (the median
round's), the interval for its median per-round p50 and the rounds taken; the comparison's
answer (``decide.answer``) is in ``comparison``. Rows measured on remote devices are measured
there in fixed rounds (each row on its own); their intervals are computed here.
"""
from __future__ import annotations

import contextlib
import csv
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.deploy_check import Holdout, compile_checked, make_holdout
from edgeprune.errors import UserInputError
from edgeprune.measure.decide import describe, fastest_vs_runner_up
from edgeprune.measure.protocol import MeasureSettings, RoundPolicy, measure_interleaved
from edgeprune.profiles import load_profile, profile_names
from edgeprune.targets.base import PRECISIONS, onnx_input_shape, staging_dir, write_json_atomic
from edgeprune.ui import Steps, markdown_table

COLUMNS = ["device", "target", "runtime", "precision", "status", "size_mb", "accuracy", "top1_agreement",
           "p50_ms", "p50_low_ms", "p50_high_ms", "rounds", "p90_ms", "throughput_ips", "peak_rss_mb", "reason"]


@dataclass
class BenchConfig:
    model: str
    targets: list[str]
    precisions: list[str]
    data: str
    out: str | None = None
    threads: int = 1
    rounds: int = 3  # minimum interleaved rounds
    max_rounds: int | None = None  # cap (None: 15, or ``rounds`` if more)
    confidence: float = 0.95
    min_seconds: float = 2.0
    holdout: int = 500
    calib: int = 300
    force: bool = False
    progress: bool = True
    latency_only: bool = False  # untrained models: report parity numbers without failing rows on them
    devices: list[Any] = field(default_factory=list)  # connected RemoteDevices; empty = this machine


def resolve_onnx(model: str) -> Path:
    path = Path(model)
    if path.is_dir():
        cand = path / "onnx" / "pruned.onnx"
        if not cand.is_file():
            raise UserInputError(f"{path} is a folder but not an edgeprune build (no onnx/pruned.onnx)")
        return cand
    if not path.is_file():
        raise UserInputError(f"model not found: {path}", "pass an .onnx file or a build folder")
    return path


def resolve_target(name: str) -> dict[str, Any]:
    """A profile by name, or the first profile whose runtime is ``name`` (emulated profiles only by name)."""
    from edgeprune.remote.emulated import is_emulated

    if name in profile_names():
        return load_profile(name)
    for prof_name in profile_names():
        prof = load_profile(prof_name)
        if prof["runtime"] == name and not is_emulated(prof):
            return prof
    raise UserInputError(f"unknown target or runtime {name!r}", f"choose from: {', '.join(profile_names())}")


def _holdout(onnx_path: Path, cfg: BenchConfig, shape: list[int]) -> tuple[Holdout, np.ndarray]:
    from edgeprune.data import calibration_batch, load_dataset
    from edgeprune.export import onnx_outputs

    test = load_dataset(cfg.data, "test", image_size=shape[2], channels=shape[1])
    train = load_dataset(cfg.data, "train", image_size=shape[2], channels=shape[1])
    holdout = make_holdout(test, cfg.holdout, lambda x: onnx_outputs(onnx_path, x))
    return holdout, calibration_batch(train, cfg.calib, seed=1)


def _interval(measurement: dict[str, Any], policy: RoundPolicy) -> list[float | None]:
    """The row's interval for its median per-round p50: the comparison's, or (remote rows) computed here."""
    if measurement.get("p50_interval_ms") is not None:
        return list(measurement["p50_interval_ms"])
    rounds = measurement.get("rounds") or []
    if not rounds:
        return [None, None]
    from edgeprune.measure.decide import p50_interval

    return p50_interval(rounds, len(rounds), len(rounds), policy.confidence)


def _row(r: dict[str, Any], policy: RoundPolicy) -> dict[str, Any]:
    measurement = r.get("measurement") or {}
    lat = measurement.get("latency") or {}
    if isinstance(r.get("latency"), str):  # emulated: "not measured (emulated)"
        lat = {"p50_ms": r["latency"]}
    parity = r.get("parity") or {}
    low, high = _interval(measurement, policy) if measurement else (None, None)
    return {"device": r.get("device") or "local", "target": r["target"], "runtime": r["runtime"],
            "precision": r["precision"], "status": r["status"], "size_mb": r.get("size_mb"),
            "accuracy": r.get("accuracy"), "top1_agreement": parity.get("top1_agreement"),
            "p50_ms": lat.get("p50_ms"), "p50_low_ms": low, "p50_high_ms": high,
            "rounds": len(measurement.get("rounds") or []) or None, "p90_ms": lat.get("p90_ms"),
            "throughput_ips": lat.get("throughput_ips"), "peak_rss_mb": measurement.get("peak_rss_mb"),
            "reason": r.get("reason", "")}


def bench_table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(COLUMNS, [[r[c] for c in COLUMNS] for r in rows])


def bench_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _check_one(cfg, prof, prec, onnx_path, holdout, calib, out_dir) -> dict[str, Any]:
    """One gated row: compiled and checked here, or (an emulated profile) compiled here, run under emulation.

    Emulated rows are about correctness only (the gates always apply) and are never timed.
    """
    from edgeprune.remote.emulated import EmulatedDevice, is_emulated

    if not is_emulated(prof):
        return compile_checked(onnx_path, prof, prec, out_dir, holdout, calib, cfg.threads, gate=not cfg.latency_only)
    from edgeprune.remote.host_compiled import check_on_device

    with EmulatedDevice.from_profile(prof) as device:
        return check_on_device(device, onnx_path, prof, prec, holdout, calib, out_dir, threads=1)


def _bench_local(cfg, profiles, onnx_path, holdout, calib, settings, stage, steps,
                 policy: RoundPolicy) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    steps.start(f"compiling {len(profiles) * len(cfg.precisions)} artifacts and checking parity")
    results = []
    for prof in profiles:
        for prec in cfg.precisions:
            results.append(_check_one(cfg, prof, prec, onnx_path, holdout, calib, stage / f"{prof['name']}-{prec}"))
    steps.done(", ".join(f"{r['target']}/{r['precision']} {r['status']}" for r in results))
    ok = {f"{r['target']}-{r['precision']}": r for r in results if r["status"] == "ok" and not r.get("latency")}
    steps.start(f"measuring {len(ok)} artifacts, {policy.min_rounds} to {policy.max_rounds} interleaved rounds "
                f"(until the fastest is decided at {100 * policy.confidence:g}% confidence), {cfg.threads} thread(s)")
    measured = measure_interleaved({k: r["artifact"] for k, r in ok.items()}, settings, rounds=policy.min_rounds,
                                   progress=cfg.progress, question=fastest_vs_runner_up,
                                   max_rounds=policy.max_rounds, confidence=policy.confidence) if ok else {}
    for key, m in measured.items():
        ok[key]["measurement"] = m
    decision = getattr(measured, "decision", None)
    steps.done(describe(decision) if decision else "")
    return results, decision


def _bench_remote(cfg, profiles, onnx_path, holdout, calib, settings, stage,
                  steps) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every target x precision compiled, gated and measured on every device (devices concurrently)."""
    from edgeprune.remote.checked import remote_bench_rows

    steps.start(f"compiling and measuring on {len(cfg.devices)} device(s), {cfg.rounds} rounds each")
    results = []
    for prof in profiles:
        for prec in cfg.precisions:
            results += remote_bench_rows(cfg.devices, onnx_path, prof, prec, holdout, calib, settings,
                                         cfg.rounds, stage / f"{prof['name']}-{prec}")
    steps.done(", ".join(f"{r.get('device')} {r['target']}/{r['precision']} {r['status']}" for r in results))
    return results, None


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    onnx_path = resolve_onnx(cfg.model)
    bad = [p for p in cfg.precisions if p not in PRECISIONS]
    if bad:
        raise UserInputError(f"unknown precision {bad[0]!r}", f"choose from: {', '.join(PRECISIONS)}")
    policy = RoundPolicy.resolve(cfg.rounds, cfg.max_rounds, cfg.confidence)  # bad values fail before any work
    profiles = [resolve_target(t) for t in cfg.targets]
    shape = onnx_input_shape(onnx_path)
    steps = Steps(3, quiet=not cfg.progress)
    steps.start("loading held-out and calibration data")
    holdout, calib = _holdout(onnx_path, cfg, shape)
    steps.done(f"{len(holdout.x)} held-out, {len(calib)} calibration images")
    with contextlib.ExitStack() as stack:
        out = cfg.out or stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeprune-bench-")) + "/bench"
        stage = stack.enter_context(staging_dir(out, must_contain="bench.json"))
        settings = MeasureSettings(threads=cfg.threads, min_seconds=cfg.min_seconds)
        if cfg.devices:
            results, decision = _bench_remote(cfg, profiles, onnx_path, holdout, calib, settings, stage, steps)
        else:
            results, decision = _bench_local(cfg, profiles, onnx_path, holdout, calib, settings, stage, steps, policy)
        rows = [_row(r, policy) for r in results]
        for r in results:
            r["artifact"] = str(Path(r["artifact"]).relative_to(stage)) if r.get("artifact") else None
        report = {"model": str(onnx_path), "input_shape": shape, "threads": cfg.threads, "rows": rows,
                  "rounds": {"min": policy.min_rounds, "max": policy.max_rounds, "confidence": policy.confidence},
                  "comparison": decision, "comparison_sentence": describe(decision) if decision else None,
                  "details": results}
        sentence = f"\n{report['comparison_sentence']}\n" if decision else ""
        (stage / "bench.md").write_text(bench_table(rows) + "\n" + sentence)
        (stage / "bench.csv").write_text(bench_csv(rows))
        write_json_atomic(stage / "bench.json", report)
    return report
