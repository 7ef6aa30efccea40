"""The measurement protocol, end to end: real worker subprocesses on real compiled artifacts.

Artifacts are ONNX Runtime (and, where installed, OpenVINO) builds of the tiny CNN
from conftest; settings are small (warm-up 0.1 s, 0.2 s timed) so each measurement
takes well under a second plus process start.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from edgeprune.errors import UserInputError
from edgeprune.measure import env, memory
from edgeprune.measure.parity import DEFAULT_GATES, check_gates, compare_outputs, run_batched
from edgeprune.measure.protocol import MeasureSettings, MeasurementError, _combine, measure, measure_interleaved
from edgeprune.measure.stats import summarize
from edgeprune.targets import get_runtime
from edgeprune.targets.base import Artifact
from tests.conftest import export_onnx, make_tiny_cnn

REPO = Path(__file__).resolve().parent.parent
FAST = MeasureSettings(threads=1, warmup_s=0.1, min_iters=20, min_seconds=0.2, max_seconds=10.0, timeout_s=60.0)


def _ort():
    pytest.importorskip("onnxruntime")
    if not (REPO / "edgeprune" / "targets" / "onnxruntime.py").is_file():
        pytest.skip("edgeprune.targets.onnxruntime is not written yet")
    return get_runtime("onnxruntime")


def _compile(runtime: str, onnx_path: Path, out_dir: Path) -> Artifact:
    return get_runtime(runtime).compile(onnx_path, "fp32", None, {"options": {}}, out_dir)


@pytest.fixture
def ort_artifact(tiny_onnx, tmp_path) -> Artifact:
    _ort()
    return _compile("onnxruntime", tiny_onnx, tmp_path / "ort")


def _run_worker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeprune.measure.worker", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120, check=False)


# ---- stats, memory, environment -------------------------------------------------------------

def test_summarize_known_list():
    s = summarize([float(v) for v in range(1, 11)], batch=4)
    assert s["n"] == 10 and s["min_ms"] == 1.0 and s["max_ms"] == 10.0
    assert s["mean_ms"] == pytest.approx(5.5)
    # numpy "linear": rank q/100 * (n - 1) between order statistics
    assert s["p50_ms"] == pytest.approx(5.5)
    assert s["p90_ms"] == pytest.approx(9.1)
    assert s["p99_ms"] == pytest.approx(9.91)
    assert s["std_ms"] == pytest.approx(math.sqrt(8.25))
    assert s["throughput_ips"] == pytest.approx(4 * 1000 / 5.5)
    assert summarize([2.0])["p99_ms"] == 2.0
    with pytest.raises(ValueError):
        summarize([])


def test_memory_peak_tracks_allocation():
    """In a fresh process (a long test session may hold freed memory that a new block reuses)."""
    import subprocess
    import sys

    code = ("import numpy as np; from edgeprune.measure import memory as m; now = m.current_rss_mb(); "
            "peak = m.peak_rss_mb(); assert now is not None and 0 < now <= peak + 1e-6; "
            "block = np.ones(40 * 2**20 // 8); after = m.current_rss_mb(); del block; "
            "print(now, after, m.peak_rss_mb())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    now, after, peak = map(float, out)
    assert after >= now + 30 and peak >= now + 30


def test_environment_fields():
    e = env.environment(threads=3)
    for key in ("cpu_model", "logical_cores", "physical_cores", "cpufreq_governor", "load_average",
                "total_memory_mb", "python", "platform", "machine", "hostname", "threads", "timestamp"):
        assert key in e
    assert e["logical_cores"] == os.cpu_count() and e["threads"] == 3
    assert e["cpu_model"] and e["total_memory_mb"] > 0 and len(e["load_average"]) == 3
    assert datetime.fromisoformat(e["timestamp"]).utcoffset().total_seconds() == 0
    json.dumps(e)


def test_cpu_flags_read_x86_and_arm_blocks():
    assert env.cpu_flags([{"processor": "0", "flags": "fpu avx2 avx512_vnni"}]) == {"fpu", "avx2", "avx512_vnni"}
    assert env.cpu_flags([{"processor": "0", "Features": "fp asimd asimdhp"}]) == {"fp", "asimd", "asimdhp"}
    assert env.cpu_flags([{"processor": "0"}]) is None and env.cpu_flags([]) is None


# ---- worker ----------------------------------------------------------------------------------

def test_worker_result_fields_and_sane_values(ort_artifact, tmp_path):
    out = tmp_path / "m.json"
    proc = _run_worker("--artifact", str(ort_artifact.path), "--threads", "1", "--warmup-s", "0.1",
                       "--min-iters", "30", "--min-seconds", "0.2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    for key in ("runtime", "precision", "threads", "latency", "peak_rss_mb", "rss_before_load_mb", "load_s",
                "iterations", "warmup_iterations", "size_mb", "environment", "versions"):
        assert key in r, key
    lat = r["latency"]
    assert r["runtime"] == "onnxruntime" and r["precision"] == "fp32" and r["threads"] == 1
    assert lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert 0 < lat["min_ms"] and lat["n"] == r["iterations"] >= 30
    assert r["timing"]["timed_s"] >= 0.2 and r["warmup_iterations"] >= 5
    assert r["peak_rss_mb"] >= r["rss_before_load_mb"] > 0 and r["load_s"] > 0
    assert r["size_mb"] == pytest.approx(ort_artifact.size_bytes() / 1e6)
    assert "onnxruntime" in r["versions"] and r["environment"]["threads"] == 1
    assert r["thread_env"]["OMP_NUM_THREADS"] == "1"


def test_worker_prints_json_to_stdout_and_honours_max_seconds(ort_artifact):
    proc = _run_worker("--artifact", str(ort_artifact.path), "--threads", "1", "--warmup-s", "0",
                       "--min-iters", "10000000", "--min-seconds", "0", "--max-seconds", "0.3")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["iterations"] < 10000000 and 0.3 <= r["timing"]["timed_s"] < 1.0


def test_worker_errors_are_one_line_and_nonzero(tmp_path):
    proc = _run_worker("--artifact", str(tmp_path), "--threads", "1")
    assert proc.returncode != 0 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a compiled artifact" in lines[0]
    bad = _run_worker("--artifact", str(tmp_path), "--threads", "-1")
    assert bad.returncode == 2 and "--threads must be in 0.." in bad.stderr


# ---- protocol --------------------------------------------------------------------------------

def test_measure_rejects_a_folder_that_is_not_an_artifact(tmp_path):
    with pytest.raises(UserInputError, match="not a compiled artifact"):
        measure(tmp_path, FAST)
    with pytest.raises(UserInputError, match="min_iters"):
        measure(tmp_path, MeasureSettings(min_iters=0))


def test_measure_reports_worker_failure_and_timeout(ort_artifact):
    ort_artifact.file("model").write_bytes(b"this is not an onnx model")
    with pytest.raises(MeasurementError, match=r"failed \(exit \d+\): .+") as err:
        measure(ort_artifact.path, FAST)
    assert "\n" not in str(err.value) and err.value.exit_code == 1
    assert "edgeprune-measure" not in str(err.value) and "model" in str(err.value)


def test_measure_timeout_is_a_clear_error(ort_artifact):
    slow = MeasureSettings(threads=1, warmup_s=0.0, min_seconds=30.0, max_seconds=30.0, timeout_s=1.0)
    with pytest.raises(MeasurementError, match="timed out after 1 s"):
        measure(ort_artifact.path, slow)


def test_measure_interleaves_rounds(tiny_onnx, tmp_path):
    _ort()
    wide = export_onnx(make_tiny_cnn(width=48), (1, 1, 28, 28), tmp_path / "wide.onnx")
    arts = {"A": _compile("onnxruntime", tiny_onnx, tmp_path / "a").path,
            "B": _compile("onnxruntime", wide, tmp_path / "b").path}
    order = []
    results = measure_interleaved(arts, FAST, rounds=2, progress=False,
                                  on_measure=lambda name, rnd, res: order.append((name, rnd, res["artifact"])))
    assert [(n, r) for n, r, _ in order] == [("A", 0), ("B", 0), ("A", 1), ("B", 1)]
    assert all(path == str(arts[n].resolve()) for n, _, path in order)
    for name, res in results.items():
        assert len(res["rounds"]) == 2 and res["p50_ms_min"] == min(res["rounds"])
        assert res["p50_ms_median"] == pytest.approx(sum(res["rounds"]) / 2)
        assert res["latency"]["p50_ms"] == res["rounds"][res["median_round"]]
        assert res["noise"]["spread"] >= 1.0 and "rounds" in res["noise"]["note"]
        assert res["process_s"] > res["timing"]["worker_s"] > 0
    assert results["B"]["size_mb"] > results["A"]["size_mb"]


def test_combine_picks_the_median_round_and_reports_noise():
    runs = [{"latency": {"p50_ms": v}, "tag": i} for i, v in enumerate([3.0, 1.0, 2.0])]
    res = _combine(runs)
    assert res["tag"] == 2 and res["rounds"] == [3.0, 1.0, 2.0] and res["p50_ms_median"] == 2.0
    assert res["noise"]["spread"] == pytest.approx(3.0) and "noisy" in res["noise"]["note"]
    assert _combine(runs[:1])["noise"]["spread"] == 1.0


def test_measure_openvino_artifact(tiny_onnx, tmp_path):
    pytest.importorskip("openvino")
    if not (REPO / "edgeprune" / "targets" / "openvino.py").is_file():
        pytest.skip("edgeprune.targets.openvino is not written")
    art = _compile("openvino", tiny_onnx, tmp_path / "ov")
    r = measure(art.path, FAST)
    assert r["runtime"] == "openvino" and "openvino" in r["versions"]
    assert r["latency"]["min_ms"] <= r["latency"]["p50_ms"] <= r["latency"]["max_ms"]
    assert r["size_mb"] == pytest.approx(art.size_bytes() / 1e6)


# ---- parity ----------------------------------------------------------------------------------

def test_compare_outputs_numbers():
    ref = np.array([[1.0, 2.0, 0.0], [4.0, 0.0, 1.0], [0.0, 0.0, -3.0]])
    out = np.array([[1.0, 2.5, 0.0], [4.0, 5.0, 1.0], [0.0, 0.0, -3.0]])
    r = compare_outputs(out, ref, labels=np.array([1, 0, 2]))
    assert r["max_abs_diff"] == pytest.approx(5.0)
    assert r["mean_abs_diff"] == pytest.approx(5.5 / 9)
    assert r["max_rel_diff"] == pytest.approx(5.0 / 4.0)
    assert r["top1_agreement"] == pytest.approx(2 / 3)
    assert r["accuracy"] == pytest.approx(1 / 3) and r["ref_accuracy"] == pytest.approx(2 / 3)
    nan = compare_outputs(np.where(out > 4, np.nan, out), ref)
    assert nan["nonfinite"] == 1 and math.isinf(nan["max_rel_diff"]) and "accuracy" not in nan
    with pytest.raises(UserInputError, match="shape"):
        compare_outputs(out[:, :2], ref)


def test_check_gates_messages_carry_numbers():
    ok, msg = check_gates({"max_rel_diff": 2e-4, "top1_agreement": 1.0, "nonfinite": 0}, "fp32")
    assert ok and "max relative difference 0.0002 <= 0.001" in msg
    ok, msg = check_gates({"top1_agreement": 0.91, "accuracy": 0.80, "ref_accuracy": 0.85, "nonfinite": 0}, "int8")
    assert not ok
    assert "top-1 agreement 0.91 < 0.95" in msg and "accuracy drop 0.05" in msg and "> 0.02" in msg
    ok, msg = check_gates({"max_rel_diff": float("inf"), "top1_agreement": 1.0, "nonfinite": 3}, "fp32")
    assert not ok and "3 non-finite" in msg and "inf > 0.001" in msg
    ok, msg = check_gates({"top1_agreement": 0.99}, "fp16")
    assert not ok and "without labels" in msg
    assert check_gates({"top1_agreement": 0.5}, "int8", {"int8": {"min_top1_agreement": 0.4}})[0]
    assert set(DEFAULT_GATES) == {"fp32", "fp16", "bf16", "int8"}
    with pytest.raises(UserInputError, match="no parity gates"):
        check_gates({}, "int4")


def test_run_batched_pads_and_trims_on_a_real_runner(tiny_model, tiny_onnx, tmp_path, random_inputs):
    ort = _ort()
    one = _compile("onnxruntime", tiny_onnx, tmp_path / "b1")
    four_onnx = export_onnx(tiny_model, (4, 1, 28, 28), tmp_path / "b4.onnx")
    four = _compile("onnxruntime", four_onnx, tmp_path / "b4")
    x = random_inputs[:10]
    single = run_batched(ort.load(one, 1), x, one.input_shape[0])
    batched = run_batched(ort.load(four, 1), x, four.input_shape[0])
    assert single.shape == batched.shape == (10, 10)
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)
    import torch

    with torch.no_grad():
        ref = tiny_model(torch.from_numpy(x)).numpy()
    r = compare_outputs(batched, ref)
    assert check_gates(r, "fp32")[0], r


# ---- device side: no torch -------------------------------------------------------------------

def test_measure_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import edgeprune.measure.worker\n"
            "assert 'numpy' not in sys.modules, 'worker must not import numpy before setting thread env'\n"
            "import edgeprune.measure.protocol, edgeprune.measure.parity, edgeprune.measure.env\n"
            "import edgeprune.measure as m; m.summarize([1.0]); m.check_gates\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
