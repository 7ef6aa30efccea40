"""Does the build's latency verdict survive noise? Repeat one budget build and check it against benchmark_app.

Runs ``edgeprune build --target x86 --budget SHARE --threads 1 --finetune-epochs 0`` RUNS times on the same
trained model (each a fresh command; the latency table is cached after the first), and after each build
runs OpenVINO's own ``benchmark_app`` on the build's ``onnx/baseline.onnx`` and ``onnx/pruned.onnx``
(``-d CPU -infer_precision f32 -nthreads 1 -hint none -t SECONDS``), PAIRS runs of each, alternating
(ABBA...): on a shared machine whose speed moves in phases of about a second, two long runs one after
the other can see different machines. benchmark_app's verdict is "met" when the median of its per-pair
ratios pruned/baseline is at most SHARE, else "missed". Records, per build: edgeprune's
exit code and decision (met / missed / undecided), its estimate and interval for the paired per-round ratio,
the rounds taken and the spread, benchmark_app's ratio and verdict, whether they agree (a decided build
whose decision matches benchmark_app's), and the machine's load average around the build.

Usage: python bench/verdict_check.py --weights /tmp/wtg-r20/model.pt [--runs 10] [--budget 0.6x] [--pairs 8]
       [--seconds 1]
       [--out-dir /tmp/wtg-verdict] [--md bench/results/verdict.md]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def benchmark_app_median(onnx: Path, seconds: int) -> float:
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    cmd = [exe, "-m", str(onnx), "-d", "CPU", "-infer_precision", "f32", "-nthreads", "1", "-hint", "none",
           "-t", str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Median:\s+([0-9.]+) (ms|us)", out)
    if not match:
        raise RuntimeError("benchmark_app printed no median latency:\n" + out[-2000:])
    return float(match.group(1)) / (1000.0 if match.group(2) == "us" else 1.0)


def build_command(args: argparse.Namespace, out: Path) -> list[str]:
    return [sys.executable, "-m", "edgeprune", "build", "--target", "x86", "--weights", args.weights,
            "--data", "fashion-mnist", "--budget", args.budget, "--threads", "1", "--finetune-epochs", "0",
            *(["--eval-limit", str(args.eval_limit)] if args.eval_limit else []), "--out", str(out), "--no-progress",
            *args.extra]


def one(args: argparse.Namespace, i: int, env: dict[str, str]) -> dict:
    out = Path(args.out_dir) / f"build-{i}"
    cmd = build_command(args, out)
    load_before = os.getloadavg()
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    row = {"run": i + 1, "exit": proc.returncode, "seconds": round(time.time() - started, 1),
           "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in os.getloadavg()],
           "error": (proc.stderr.strip().splitlines() or [""])[-1] if proc.returncode else ""}
    report_path = out / "report.json"
    if not report_path.is_file():
        row["decision"] = "no build"
        return row
    report = json.loads(report_path.read_text())
    gate = report["gates"]["latency_budget"]
    row.update(decision=gate["decision"], estimate=gate.get("estimate"), interval=gate.get("interval"),
               rounds=gate["rounds"], spread=gate["spread"], measured_ms=gate["measured_ms"],
               baseline_ms=gate["baseline_ms"], search_measured_ms=gate.get("search_measured_ms"))
    ratios, base, pruned = [], [], []
    for k in range(args.pairs):  # alternating order, so a slow phase of the shared machine hits both alike
        order = ("baseline", "pruned") if k % 2 == 0 else ("pruned", "baseline")
        got = {name: benchmark_app_median(out / "onnx" / f"{name}.onnx", args.seconds) for name in order}
        base.append(got["baseline"])
        pruned.append(got["pruned"])
        ratios.append(got["pruned"] / got["baseline"])
    share = float(args.budget.rstrip("x"))
    ratio = float(statistics.median(ratios))
    base_ms, pruned_ms = float(statistics.median(base)), float(statistics.median(pruned))
    row.update(bapp_baseline_ms=base_ms, bapp_pruned_ms=pruned_ms, bapp_ratio=ratio, bapp_ratios=ratios,
               bapp_verdict="met" if ratio <= share else "missed",
               bapp_margin_pct=100 * (ratio - share) / share)
    row["agrees"] = row["decision"] == row["bapp_verdict"] if row["decision"] in ("met", "missed") else None
    return row


def markdown(args: argparse.Namespace, rows: list[dict], command: str) -> str:
    decided = [r for r in rows if r.get("decision") in ("met", "missed")]
    undecided = [r for r in rows if r.get("decision") == "undecided"]
    agree = [r for r in decided if r.get("agrees")]
    fmt = lambda v, f="{:.3f}": "" if v is None else f.format(v)  # noqa: E731
    lines = [
        "# Latency verdict under noise: repeated budget builds vs benchmark_app", "",
        f"Command (run {len(rows)} times, one after another, latency table cached after the first):", "",
        f"    {command}", "",
        f"then `benchmark_app -m <build>/onnx/{{baseline,pruned}}.onnx -d CPU -infer_precision f32 -nthreads 1 "
        f"-hint none -t {args.seconds}`, {args.pairs} runs of each model alternating (ABBA...); benchmark_app's "
        f"verdict is \"met\" when the median of its per-pair ratios pruned/baseline is at most {args.budget}.", "",
        f"**{len(decided)} of {len(rows)} builds gave a verdict** (met/missed), {len(undecided)} were undecided"
        + (f", {len(rows) - len(decided) - len(undecided)} produced no build"
           if len(rows) > len(decided) + len(undecided) else "")
        + f"; **{len(agree)} of {len(decided)} verdicts agree with benchmark_app**.", "",
        "| run | exit | decision | pruned/baseline (interval) | rounds | spread | benchmark_app ratio | "
        "benchmark_app verdict | agrees | load (1 min) before/after | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        iv = r.get("interval") or [None, None]
        interval = f"{fmt(r.get('estimate'))} [{fmt(iv[0]) or '?'}, {fmt(iv[1]) or '?'}]" if r.get("estimate") else ""
        agrees = {True: "yes", False: "NO", None: "—"}[r.get("agrees")]
        lines.append(f"| {r['run']} | {r['exit']} | {r['decision']} | {interval} | {r.get('rounds', '')} | "
                     f"{fmt(r.get('spread'), '{:.2f}x')} | {fmt(r.get('bapp_ratio'))} | {r.get('bapp_verdict', '')} | "
                     f"{agrees} | {r['load_before'][0]:.1f} / {r['load_after'][0]:.1f} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--budget", default="0.6x")
    ap.add_argument("--seconds", type=int, default=1, help="benchmark_app -t of each run")
    ap.add_argument("--pairs", type=int, default=8, help="benchmark_app runs of each model, alternating")
    ap.add_argument("--eval-limit", type=int, default=None, help="evaluate accuracy on N test images only")
    ap.add_argument("--out-dir", default="/tmp/wtg-verdict")
    ap.add_argument("--md", default=str(ROOT / "bench" / "results" / "verdict.md"))
    ap.add_argument("extra", nargs="*", help="more build flags, after --")
    args = ap.parse_args()
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = "edgeprune " + " ".join(shlex.quote(c) for c in build_command(args, Path("OUT"))[3:])
    rows = []
    for i in range(args.runs):
        shutil.rmtree(Path(args.out_dir) / f"build-{i}", ignore_errors=True)
        rows.append(one(args, i, env))
        print(json.dumps(rows[-1]), flush=True)
        Path(args.md).with_suffix(".json").write_text(json.dumps(rows, indent=1))
        Path(args.md).write_text(markdown(args, rows, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
