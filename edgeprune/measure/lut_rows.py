"""Measure one latency-table row: coarse grid, adaptive refinement, minus the micro-model's own I/O cost.

``measure_row`` runs every micro-model of a row in one fresh ``lut_worker`` process (the
worker is used as it is: a job is one signature and its (in, out) points), then
1. *adaptive sampling* (``adaptive.propose``): where a measured point is off its neighbours'
   interpolation by more than 10%, the grid points halfway into the neighbouring gaps are
   measured too, in a second job;
2. *identity subtraction*: an identity micro-model (``micro_units.identity_onnx``) with the
   same input and output shapes is measured the same way, on a coarse grid (at most
   ``IDENTITY_POINTS`` per axis, interpolated between; each identity point once per process), and
   subtracted from every point;
3. *the sink* (``lut.sinks``): on OpenVINO a convolution with a kernel over 1x1 and its identity are both measured
   ending in a global average pool, so neither hands a whole feature map back in the plain layout.
Invariant: the returned row is *net* — ms = max(raw - identity, NET_FLOOR * raw) at every point
it lists — and covers at least the requested grid; nothing here imports torch.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgeprune.errors import EdgepruneError
from edgeprune.interrupt import run_child
from edgeprune.measure.adaptive import propose
from edgeprune.measure.lut import LayerSig, SigTable, channel_grid, sinks, thin
from edgeprune.measure.micro_units import unit_io
from edgeprune.measure.settings import MeasureSettings

IDENTITY_POINTS = 4
NET_FLOOR = 0.05  # a layer always costs something: never below 5% of its raw figure
MAX_NEW = 3       # adaptive points per axis per row (a new point adds a whole line of the grid)
MAX_NEW_UNIT = 1  # for fused units, whose points are the dearest to measure
# Runtimes whose rows stay raw (per-inference overhead included) by measurement, not by failure. MNN: its identity
# converts since session 34, but on the one model where it mattered, side by side on one machine, net rows fitted worse
# (ResNet-18 at 96 px: 57% -> 23% of variants within 10%; MobileNetV2 at 96 px 100% either way; bench/RESULTS.md
# section 4). Raw is also what every cached MNN row already holds, so their cache keys stay as they were.
RAW_ROW_RUNTIMES = frozenset({"mnn"})

# Identity points measured in this process: (settings and profile, identity key, in, out) -> ms. Identities
# depend only on input size and stride, so one table's rows share most of them; measuring each once is what
# keeps the identity subtraction cheap. A fresh process (each table build) starts empty.
_IDENTITY_MEMO: dict[tuple, float] = {}


class LutError(EdgepruneError):
    exit_code = 1


def run_points(profile, precision, settings: MeasureSettings, sig: LayerSig, points: list[list[int]], rounds: int,
               timeout_s: float, sink: bool = False) -> dict[tuple[int, int], float]:
    """(in, out) -> ms for every point, measured interleaved in one fresh ``lut_worker`` process
    (its own process group, killed if we stop waiting), timed by ``settings`` (``timing.time_runs``); ``sink``: the
    micro-models end in ``lut.sink``."""
    job = {"profile": profile, "precision": precision, "threads": settings.threads, "sig": asdict(sig),
           "points": points, "rounds": rounds, "settings": settings.to_dict(), "sink": bool(sink)}
    with tempfile.TemporaryDirectory(prefix="edgeprune-lutjob-") as tmp:
        jpath, rpath = Path(tmp) / "job.json", Path(tmp) / "result.json"
        jpath.write_text(json.dumps(job))
        try:
            proc = run_child([sys.executable, "-m", "edgeprune.measure.lut_worker", "--job", str(jpath),
                              "--out", str(rpath)], timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise LutError(f"latency table row {sig.key()} timed out after {timeout_s:g} s") from exc
        if proc.returncode != 0 or not rpath.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise LutError(f"latency table row {sig.key()} failed: {last}")
        result = json.loads(rpath.read_text())
    return {(p[0], p[1]): p[2] for p in result["points"]}


def io_widths(sig: LayerSig, in_c: int, out_c: int) -> tuple[int, int]:
    """Input and output channel widths of ``sig``'s micro-model at row point (in_c, out_c)."""
    if sig.kind == "unit":
        return unit_io(sig, in_c, out_c)[:2]
    return (in_c, in_c) if sig.kind == "depthwise" else (in_c, out_c)


def identity_sig(sig: LayerSig) -> LayerSig:
    """The identity standing for ``sig``: same input size, same total stride."""
    stride = unit_io(sig, 1, 1)[2] if sig.kind == "unit" else sig.stride[0]
    hw = (1, 1) if sig.kind == "linear" else sig.in_hw
    return LayerSig("identity", stride=(stride, stride), in_hw=hw, relu=False)


def _points(sig: LayerSig, ins: list[int], outs: list[int]) -> list[list[int]]:
    return [[c, c] for c in ins] if sig.kind == "depthwise" else [[i, o] for i in ins for o in outs]


def _assemble(sig: LayerSig, ins: list[int], outs: list[int], ms: dict) -> SigTable:
    if sig.kind == "depthwise":
        return SigTable(sig, ins, [ins[-1]], [[ms[(c, c)]] for c in ins])
    return SigTable(sig, ins, outs, [[ms[(i, o)] for o in outs] for i in ins])


def _refine(args: tuple, sig: LayerSig, ins: list[int], outs: list[int], ms: dict, multiple: int, sink: bool = False):
    """Propose and measure adaptive points; returns the grown (ins, outs) and fills ``ms``."""
    row = _assemble(sig, ins, outs, ms)
    grid_ins = sorted(set(channel_grid(ins[-1], multiple)) | set(ins))
    new_ins, new_outs = propose(row.ins, row.outs, row.ms, grid_ins, channel_grid(row.outs[-1], multiple),
                                max_new=MAX_NEW_UNIT if sig.kind == "unit" else MAX_NEW)
    if sig.kind == "depthwise":
        new_outs = []
    all_ins, all_outs = sorted(set(ins) | set(new_ins)), sorted(set(outs) | set(new_outs))
    todo = [p for p in _points(sig, all_ins, all_outs) if tuple(p) not in ms]
    if todo:
        profile, precision, settings, rounds, timeout_s = args
        ms.update(run_points(profile, precision, settings, sig, todo, rounds, timeout_s, sink))
    return all_ins, all_outs


_NO_IDENTITY: set = set()  # (profile name, runtime) whose converter refused the identity micro-model


def warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _identity_table(args: tuple, sig: LayerSig, ins: list[int], outs: list[int], sink: bool = False) -> SigTable:
    pairs = [io_widths(sig, p[0], p[1]) for p in _points(sig, ins, outs)]
    id_ins = thin(sorted({a for a, _ in pairs}), IDENTITY_POINTS)
    id_outs = thin(sorted({b for _, b in pairs}), IDENTITY_POINTS)
    isig = identity_sig(sig)
    profile, precision, settings, rounds, timeout_s = args
    scope = (json.dumps(profile, sort_keys=True, default=str), precision, json.dumps(settings.to_dict(), sort_keys=True),
             rounds, isig.key(), sink)
    todo = [[i, o] for i in id_ins for o in id_outs if (*scope, i, o) not in _IDENTITY_MEMO]
    if todo:
        got = run_points(profile, precision, settings, isig, todo, rounds, timeout_s, sink)
        _IDENTITY_MEMO.update({(*scope, i, o): ms for (i, o), ms in got.items()})
    return SigTable(isig, id_ins, id_outs, [[_IDENTITY_MEMO[(*scope, i, o)] for o in id_outs] for i in id_ins])


def measure_row(profile: dict[str, Any], precision: str, settings: MeasureSettings, sig: LayerSig, ins: list[int],
                outs: list[int], rounds: int, timeout_s: float, multiple: int, adaptive: bool = True) -> SigTable:
    """The net row of ``sig`` over at least ins x outs (depthwise: the diagonal); raw on ``RAW_ROW_RUNTIMES``."""
    args = (profile, precision, settings, rounds, timeout_s)
    sink = sinks(str(profile.get("runtime")), sig)  # the row and its identity alike
    ms = run_points(profile, precision, settings, sig, _points(sig, ins, outs), rounds, timeout_s, sink)
    if adaptive:
        ins, outs = _refine(args, sig, ins, outs, ms, multiple, sink)
    if profile.get("runtime") in RAW_ROW_RUNTIMES:
        return _assemble(sig, ins, outs, dict(ms))
    try:
        ident = _identity_table(args, sig, ins, outs, sink)
    except LutError as exc:
        # A converter that refuses the weightless identity (MNN did before session 34): keep the raw figures, whose
        # per-inference overhead the predictor's calibrated offset absorbs.
        key = (profile.get("name"), profile.get("runtime"))
        if key not in _NO_IDENTITY:
            _NO_IDENTITY.add(key)
            warn(f"warning: {profile.get('runtime')} cannot run the identity micro-model ({exc}); its table rows "
                 "keep the runtime's per-inference overhead, which the predictor's calibration absorbs")
        return _assemble(sig, ins, outs, dict(ms))
    net = {p: net_of(raw, ident.lookup(*io_widths(sig, *p))) for p, raw in ms.items()}
    return _assemble(sig, ins, outs, net)


def net_of(raw: float, identity: float) -> float:
    """One point's net figure: its raw time less its identity's, never below ``NET_FLOOR`` of the raw."""
    return max(raw - identity, NET_FLOOR * raw)
