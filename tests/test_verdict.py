"""One timing loop for whole models and table entries; adaptive rounds that decide a latency question.

- The loop (``measure.timing``) is checked with a fake clock, then both workers are run in-process on
  real ONNX Runtime artifacts with a spy around ``run``: the same warm-up policy, gc off while timing.
- ``decide``/``run_rounds`` are checked on constructed per-round p50s (no machine noise): a quiet, clear
  case stops at the first round the sign test can decide, a noisy, close one runs to the cap and ends
  "undecided"; the sequential procedure's error stays within 1 - confidence. One real interleaved
  measurement of the tiny CNN decides "faster" in seconds.
- Device-side modules import without torch and scipy.
"""
from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeprune.errors import UserInputError
from edgeprune.measure import decide, timing
from edgeprune.measure.decide import Question, answer, look_alpha
from edgeprune.measure.protocol import Interleaved, measure_interleaved, measure_paired_rounds, run_rounds
from edgeprune.measure.settings import MIN_WARMUP_RUNS, TABLE_TIMING, MeasureSettings, RoundPolicy
from edgeprune.measure.stats import summarize
from edgeprune.targets import get_runtime
from tests.conftest import export_onnx, make_tiny_cnn

REPO = Path(__file__).resolve().parent.parent


class FakeClock:
    """Nanoseconds that advance only when the fake runner runs (``cost_ms`` per call)."""

    def __init__(self):
        self.now = 0

    def __call__(self) -> int:
        return self.now


class FakeRunner:
    def __init__(self, clock: FakeClock, cost_ms: float):
        self.clock, self.cost_ns = clock, int(cost_ms * 1e6)
        self.calls: list[bool] = []  # gc.isenabled() at each call

    def __call__(self) -> None:
        self.calls.append(gc.isenabled())
        self.clock.now += self.cost_ns


# ---- the timing loop ---------------------------------------------------------------------------

def test_loop_warms_up_by_time_then_times_with_gc_off():
    clock = FakeClock()
    run = FakeRunner(clock, cost_ms=10.0)
    settings = MeasureSettings(warmup_s=0.2, min_iters=7, min_seconds=0.5, max_seconds=60.0)
    assert gc.isenabled()
    res = timing.time_runs(run, settings, clock=clock)
    loop = res["loop"]
    # warm-up by time: 0.2 s of 10 ms runs = 20 runs (more than the 5-run floor), gc as the caller left it
    assert loop["warmup_runs"] == 20 and loop["warmup_s"] == pytest.approx(0.2)
    assert run.calls[:20] == [True] * 20
    # timed: at least 7 runs AND 0.5 s -> 50 runs, every one with the garbage collector off
    assert loop["timed_runs"] == 50 and run.calls[20:] == [False] * 50 and len(run.calls) == 70
    assert res["latencies_ms"] == [10.0] * 50 and res["latency"] == summarize([10.0] * 50)
    assert gc.isenabled() and loop["gc_disabled"] is True


def test_loop_floors_and_caps():
    clock = FakeClock()
    run = FakeRunner(clock, cost_ms=100.0)
    res = timing.time_runs(run, MeasureSettings(warmup_s=0.0, min_iters=3, min_seconds=0.0, max_seconds=60.0),
                           clock=clock)
    assert res["loop"]["warmup_runs"] == MIN_WARMUP_RUNS and res["loop"]["timed_runs"] == 3  # floors
    clock2 = FakeClock()
    slow = FakeRunner(clock2, cost_ms=400.0)
    res = timing.time_runs(slow, MeasureSettings(warmup_s=0.0, min_iters=1000, min_seconds=0.0, max_seconds=1.0),
                           clock=clock2)
    assert res["loop"]["timed_runs"] == 3  # max_seconds wins over min_iters: 3 x 0.4 s >= 1 s


def test_gc_is_restored_when_a_run_fails():
    calls = []

    def boom():
        calls.append(1)
        if len(calls) > MIN_WARMUP_RUNS:
            raise RuntimeError("runtime failed")

    with pytest.raises(RuntimeError):
        timing.time_runs(boom, MeasureSettings(warmup_s=0.0, min_iters=5, min_seconds=0.0))
    assert gc.isenabled()


def test_settings_are_the_single_source_of_defaults_and_checks():
    from edgeprune.measure import worker

    args = worker._parser().parse_args(["--artifact", "x", "--threads", "1"])
    defaults = MeasureSettings()
    assert (args.warmup_s, args.min_iters, args.min_seconds, args.max_seconds) == \
        (defaults.warmup_s, defaults.min_iters, defaults.min_seconds, defaults.max_seconds)
    bad = worker._parser().parse_args(["--artifact", "x", "--threads", "1", "--min-iters", "0"])
    assert worker._settings(bad) == (None, "min_iters must be a whole number >= 1, got 0")
    assert MeasureSettings.for_table(1).timing() == TABLE_TIMING
    with pytest.raises(UserInputError, match="unknown measurement settings: iters"):
        MeasureSettings.from_dict({"iters": 20})
    with pytest.raises(UserInputError, match="max_seconds"):
        MeasureSettings(max_seconds=float("nan"))


# ---- both workers use that loop (behaviour, on real artifacts) --------------------------------------

def _spy_on_ort(monkeypatch) -> list[list[tuple[float, bool]]]:
    """Wrap every ONNX Runtime runner's ``run``: one list per runner of (time, gc enabled) per call."""
    pytest.importorskip("onnxruntime")
    ort = get_runtime("onnxruntime")
    real_load = ort.load
    sessions: list[list[tuple[float, bool]]] = []

    def load(artifact, threads):
        runner = real_load(artifact, threads)
        calls: list[tuple[float, bool]] = []
        sessions.append(calls)
        real_run = runner.run

        def run(x):
            calls.append((time.perf_counter(), gc.isenabled()))
            return real_run(x)

        runner.run = run
        return runner

    monkeypatch.setattr(ort, "load", load)
    return sessions


def _timings(calls: list[tuple[float, bool]]) -> list[tuple[int, float, int]]:
    """Split one runner's calls into timing sessions: (warm-up calls, warm-up seconds, timed calls)."""
    out, i = [], 0
    while i < len(calls):
        j = i
        while j < len(calls) and calls[j][1]:
            j += 1
        k = j
        while k < len(calls) and not calls[k][1]:
            k += 1
        warm_s = calls[j][0] - calls[i][0] if j < len(calls) else 0.0
        out.append((j - i, warm_s, k - j))
        i = k
    return out


def test_whole_model_and_table_workers_share_one_timing_loop(monkeypatch, tiny_onnx, tmp_path):
    from edgeprune.measure import lut_worker, worker
    from edgeprune.measure.lut import LayerSig

    sessions = _spy_on_ort(monkeypatch)
    settings = MeasureSettings(threads=1, warmup_s=0.05, min_iters=9, min_seconds=0.02, max_seconds=5.0)
    art = get_runtime("onnxruntime").compile(tiny_onnx, "fp32", None, {"options": {}}, tmp_path / "ort")
    whole = worker.measure_artifact(art.path, settings)
    job = {"profile": {"name": "onnxruntime", "runtime": "onnxruntime", "options": {}}, "precision": "fp32",
           "threads": 1, "sig": {"kind": "conv", "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1],
                                 "in_hw": [8, 8], "relu": True},
           "points": [[8, 8], [8, 16]], "rounds": 2, "settings": settings.to_dict()}
    table = lut_worker.run_job(job)
    assert len(sessions) == 3  # one whole model, two table micro-models
    whole_sessions = _timings(sessions[0])
    table_sessions = [s for calls in sessions[1:] for s in _timings(calls)]
    assert len(whole_sessions) == 1 and len(table_sessions) == 4  # 2 points x 2 rounds
    for warm_calls, warm_s, timed_calls in whole_sessions + table_sessions:
        # the same policy everywhere: warm-up (gc on) of >= 5 calls and >= warmup_s, then >= min_iters timed
        # calls, all with the garbage collector off
        assert warm_calls >= MIN_WARMUP_RUNS and warm_s >= settings.warmup_s * 0.95
        assert timed_calls >= settings.min_iters
    assert whole["timing"]["gc_disabled"] is True and whole["iterations"] == whole_sessions[0][2]
    assert table["loop"]["gc_disabled"] is True and table["loop"]["settings"] == settings.timing()
    assert table["loop"]["min_warmup_runs"] >= MIN_WARMUP_RUNS
    assert table["loop"]["min_timed_runs"] >= settings.min_iters
    # and the same statistic: each table figure is the min over rounds of the per-round p50 from the loop
    for cin, cout, best, per_round in table["points"]:
        assert len(per_round) == 2 and best == min(per_round) > 0
    assert LayerSig.from_dict(job["sig"]).key() == "conv-k3x3-s1x1-p1x1-8x8-relu"


def test_table_cache_key_names_the_timing_loop():
    from edgeprune.measure.lut_build import table_context
    from edgeprune.profiles import load_profile

    pytest.importorskip("onnxruntime")
    profile = load_profile("onnxruntime")
    ctx = table_context(profile, "fp32", 1)
    assert ctx["timing"]["loop"] == timing.TIMING_LOOP and ctx["timing"]["warmup_s"] == TABLE_TIMING["warmup_s"]
    other = table_context(profile, "fp32", 1, MeasureSettings(threads=1, warmup_s=0.5))
    assert other != ctx  # rows timed with other settings are not reused


# ---- deciding a question from rounds ------------------------------------------------------------

def _fake_round(p50s: dict[str, list[float]]):
    """A ``measure_round`` that returns the next constructed p50 of every candidate."""
    def measure_round(rnd: int) -> dict[str, dict]:
        return {name: {"latency": {"p50_ms": values[rnd]}, "tag": (name, rnd)} for name, values in p50s.items()}
    return measure_round


def test_sequential_error_stays_within_the_confidence():
    for lo, hi, conf in [(3, 15, 0.95), (1, 15, 0.95), (3, 15, 0.9), (3, 15, 0.8), (3, 40, 0.95), (5, 5, 0.95)]:
        alpha = look_alpha(lo, hi, conf)
        index = [None] * (hi + 1)
        for n in range(lo, hi + 1):
            index[n] = decide._upper_index(n, alpha)
        assert decide._sign_test_error(lo, hi, index) <= 1 - conf + 1e-12, (lo, hi, conf)
    # Monte Carlo, independent of that computation: true median exactly at the budget, continuous noise;
    # a wrong "met" (or "missed") happens at most 5% of the time over the whole sequence of looks.
    rng = np.random.default_rng(1)
    wrong_met = wrong_missed = 0
    reps = 400
    for _ in range(reps):
        x = np.exp(rng.standard_normal(15) * 0.2) * 0.6
        res = run_rounds(["pruned"], _fake_round({"pruned": list(x)}), rounds=3,
                         question=Question.within_ms("pruned", 0.6), max_rounds=15)
        wrong_met += res.decision["decision"] == "met"
        wrong_missed += res.decision["decision"] == "missed"
    bound = 0.05 + 3 * (0.05 * 0.95 / reps) ** 0.5
    assert wrong_met / reps <= bound and wrong_missed / reps <= bound


def test_quiet_clear_case_stops_early():
    base = [1.00, 1.01, 0.99, 1.00, 1.02, 1.00, 0.99, 1.01, 1.00, 1.00, 1.01, 0.99, 1.00, 1.00, 1.01]
    pruned = [b * 0.50 for b in base]
    res = run_rounds(["baseline", "pruned"], _fake_round({"baseline": base, "pruned": pruned}), rounds=3,
                     question=Question.within_share("pruned", "baseline", 0.6), max_rounds=15)
    first = min(n for n in range(3, 16) if decide._upper_index(n, look_alpha(3, 15, 0.95)) is not None)
    assert isinstance(res, Interleaved) and res.rounds_taken == first < 15
    d = res.decision
    assert d["decision"] == "met" and d["final"] and d["rounds"] == first and d["confidence"] == 0.95
    assert d["estimate"] == pytest.approx(0.5) and d["interval"][1] < 0.6 and d["spread"] < 1.05
    assert res["pruned"]["rounds"] == pruned[:first] and res["pruned"]["p50_interval_ms"][1] <= max(pruned)
    assert "met after" in decide.describe(d) and "95% confidence" in decide.describe(d)


def test_noisy_close_case_runs_to_the_cap_and_is_undecided():
    # pruned/baseline alternates 0.55 / 0.65 around a 0.6x budget, with slow windows of up to 1.5x
    windows = [1.0, 1.5, 1.1, 1.0, 1.3, 1.0, 1.5, 1.2, 1.0, 1.4, 1.0, 1.1]
    base = [w * 1.0 for w in windows]
    pruned = [w * (0.55 if i % 2 else 0.65) for i, w in enumerate(windows)]
    res = run_rounds(["baseline", "pruned"], _fake_round({"baseline": base, "pruned": pruned}), rounds=3,
                     question=Question.within_share("pruned", "baseline", 0.6), max_rounds=12)
    d = res.decision
    assert res.rounds_taken == 12 and d["decision"] == "undecided" and d["final"]
    low, high = d["interval"]
    assert low is not None and high is not None and low < 0.6 < high
    assert d["spread"] == pytest.approx(max(pruned) / min(pruned)) and d["spread"] > 1.5  # the noise is reported


def test_clear_miss_and_pairing_cancels_shared_slow_windows():
    windows = [1.0, 1.6, 1.0, 1.3, 1.0, 1.5, 1.0, 1.2]  # both candidates slowed alike within a round
    base = list(windows)
    pruned = [0.7 * w for w in windows]
    res = run_rounds(["baseline", "pruned"], _fake_round({"baseline": base, "pruned": pruned}), rounds=3,
                     question=Question.within_share("pruned", "baseline", 0.6), max_rounds=8)
    d = res.decision
    assert d["decision"] == "missed" and d["interval"][0] > 0.6 and d["figure_spread"] == pytest.approx(1.0)
    assert d["spread"] == pytest.approx(1.6)  # the raw p50s were noisy, the paired ratio was not
    # the same noisy p50s against a budget in ms cannot decide between 0.75 and 1.0
    res = run_rounds(["pruned"], _fake_round({"pruned": pruned}), rounds=3,
                     question=Question.within_ms("pruned", 0.8), max_rounds=8)
    assert res.decision["decision"] == "undecided" and res.rounds_taken == 8


def test_faster_and_fixed_rounds():
    a, b = [1.0] * 10, [1.3] * 10
    res = run_rounds(["A", "B"], _fake_round({"A": a, "B": b}), rounds=3, question=Question.faster("A", "B"),
                     max_rounds=10)
    assert res.decision["decision"] == "faster" and res.rounds_taken < 10
    res = run_rounds(["A", "B"], _fake_round({"A": b, "B": a}), rounds=3, question=Question.faster("A", "B"),
                     max_rounds=10)
    assert res.decision["decision"] == "slower"
    res = run_rounds(["A", "B"], _fake_round({"A": a, "B": b}), rounds=4)  # no question: exactly 4 rounds
    assert res.rounds_taken == 4 and res.decision is None and "p50_interval_ms" not in res["A"]
    res = run_rounds(["A", "B", "C"], _fake_round({"A": b, "B": a, "C": [2.0] * 10}), rounds=3,
                     question=decide.fastest_vs_runner_up, max_rounds=10)
    assert res.decision["question"]["subject"] == "B" and res.decision["question"]["reference"] == "A"


def test_round_policy_checks():
    assert RoundPolicy.resolve(20) == RoundPolicy(20, 20, 0.95)
    assert RoundPolicy.resolve(None, None, None) == RoundPolicy(3, 15, 0.95)
    with pytest.raises(UserInputError, match="--max-rounds .* is below --rounds"):
        RoundPolicy.resolve(5, 4)
    with pytest.raises(UserInputError, match="--confidence"):
        RoundPolicy.resolve(3, 15, 1.0)
    with pytest.raises(UserInputError, match="not measured here"):
        run_rounds(["A"], _fake_round({"A": [1.0] * 3}), question=Question.faster("A", "B"))


def _small_and_wide(tiny_onnx, tmp_path) -> dict:
    """ONNX Runtime builds of the tiny CNN and of one three times as wide."""
    pytest.importorskip("onnxruntime")
    ort = get_runtime("onnxruntime")
    wide = export_onnx(make_tiny_cnn(width=48), (1, 1, 28, 28), tmp_path / "wide.onnx")
    return {"small": ort.compile(tiny_onnx, "fp32", None, {"options": {}}, tmp_path / "a").path,
            "wide": ort.compile(wide, "fp32", None, {"options": {}}, tmp_path / "b").path}


def test_real_interleaved_measurement_decides_in_seconds(tiny_onnx, tmp_path):
    """The tiny CNN against one three times as wide: decided "faster" well before the cap."""
    arts = _small_and_wide(tiny_onnx, tmp_path)
    quick = MeasureSettings(threads=1, warmup_s=0.05, min_iters=20, min_seconds=0.1, max_seconds=5.0, timeout_s=60)
    order = []
    res = measure_interleaved(arts, quick, rounds=3, progress=False, question=Question.faster("small", "wide"),
                              max_rounds=10, confidence=0.9, on_measure=lambda name, rnd, r: order.append((name, rnd)))
    d = res.decision
    assert d["decision"] == "faster", decide.describe(d)
    assert res.rounds_taken == d["rounds"] < 10 and len(order) == 2 * d["rounds"] and d["confidence"] == 0.9
    assert order[:4] == [("small", 0), ("wide", 0), ("small", 1), ("wide", 1)]
    for r in res.values():
        low, high = r["p50_interval_ms"]
        assert len(r["rounds"]) == d["rounds"] and low <= r["p50_ms_median"] <= high
        assert r["timing"]["gc_disabled"] is True


def test_real_paired_rounds_decide_a_share_question(tiny_onnx, tmp_path):
    """The build's local measurement: each round one process timing both models in alternating bursts. The
    tiny CNN is well within 0.9x of one three times as wide; memory and size come from a one-artifact process."""
    arts = _small_and_wide(tiny_onnx, tmp_path)
    quick = MeasureSettings(threads=1, warmup_s=0.05, min_iters=20, min_seconds=0.3, max_seconds=5.0, timeout_s=60)
    res = measure_paired_rounds(arts, quick, rounds=3, reference="wide", progress=False,
                                question=Question.within_share("small", "wide", 0.9), max_rounds=8, confidence=0.9)
    d = res.decision
    assert d["decision"] == "met", decide.describe(d)
    assert res.rounds_taken == d["rounds"] < 8
    assert res["wide"]["paired"]["ratio"] == 1.0 and res["small"]["paired"]["ratio"] < 0.9
    for r in res.values():
        assert len(r["rounds"]) == d["rounds"] and r["peak_rss_mb"] > 0 and "burst" in r["statistic"]
        assert r["latency"]["min_ms"] <= r["latency"]["p99_ms"]
    with pytest.raises(UserInputError, match="reference 'base'"):
        measure_paired_rounds(arts, quick, reference="base")


class FakeDevice:
    """Stands in for a ``RemoteDevice``: records pushes and jobs, answers "measure" with constructed p50s."""

    label = "fake@device"

    def __init__(self, p50s: dict[str, list[float]]):
        self.p50s, self.jobs, self.pushes, self.removed = p50s, [], 0, []

    def new_job(self):
        return "0123abcd", "~/.cache/edgeprune-device/jobs/0123abcd"

    def push_files(self, files, remote, timeout):
        self.pushes += 1
        return sum(Path(p).stat().st_size for p in files.values())

    def run_job(self, verb, job, timeout):
        assert verb == "measure" and job["rounds"] == 1
        rnd = len(self.jobs)
        self.jobs.append(job)
        return {"results": {name: {"latency": {"p50_ms": self.p50s[name][rnd]}, "artifact": f"/dev/{name}"}
                            for name in job["artifacts"]}}

    def remove_job(self, job_id):
        self.removed.append(job_id)


def test_remote_rounds_are_driven_and_decided_on_the_host(tiny_onnx, tmp_path):
    pytest.importorskip("onnxruntime")
    from edgeprune.remote.remote_target import remote_measure_interleaved

    ort = get_runtime("onnxruntime")
    arts = {"baseline": ort.compile(tiny_onnx, "fp32", None, {"options": {}}, tmp_path / "a").path,
            "pruned": ort.compile(tiny_onnx, "fp32", None, {"options": {}}, tmp_path / "b").path}
    device = FakeDevice({"baseline": [1.0] * 15, "pruned": [0.5] * 15})
    res = remote_measure_interleaved(device, arts, MeasureSettings(threads=1), 3,
                                     question=Question.within_share("pruned", "baseline", 0.6), max_rounds=15)
    assert device.pushes == 1 and len(device.jobs) == res.rounds_taken == res.decision["rounds"] < 15
    assert res.decision["decision"] == "met" and device.removed == ["0123abcd"]
    assert res["pruned"]["artifact"] == str(arts["pruned"]) and res["pruned"]["artifact_on_device"] == "/dev/pruned"
    device = FakeDevice({"baseline": [1.0] * 15, "pruned": [0.5] * 15})
    fixed = remote_measure_interleaved(device, arts, MeasureSettings(threads=1), 2)  # no question: 2 rounds
    assert len(device.jobs) == 2 and fixed.decision is None


# ---- device side: no torch, no scipy ------------------------------------------------------------

def test_device_side_imports_without_torch_or_scipy():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['scipy'] = None\n"
            "import edgeprune.measure.worker, edgeprune.measure.lut_worker, edgeprune.measure.timing\n"
            "import edgeprune.measure.protocol as p, edgeprune.measure.decide as d, edgeprune.measure.lut_build\n"
            "r = p.run_rounds(['a'], lambda i: {'a': {'latency': {'p50_ms': 1.0}}}, rounds=2)\n"
            "assert r.rounds_taken == 2 and r.decision is None\n"
            "try:\n"
            "    d.answer(d.Question.within_ms('a', 2.0), {'a': [1.0] * 6}, 3, 15, 0.95)\n"
            "except ImportError:\n"
            "    print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_scipy_is_a_declared_dependency():
    text = (REPO / "pyproject.toml").read_text()
    assert '"scipy>=1.10"' in text
    json.dumps(answer(Question.within_ms("a", 2.0), {"a": [1.0] * 6}, 3, 15, 0.95))  # JSON-ready
