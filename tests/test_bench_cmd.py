"""`edgeprune bench`: one row per target x precision, honest statuses, JSON/CSV, bad input refused."""
from __future__ import annotations

import csv
import json

import pytest

from edgeprune.cli import main
from tests.conftest import MINI_FMNIST, export_onnx, make_tiny_cnn

DATA = f"fashion-mnist:{MINI_FMNIST}"
STATUSES = {"ok", "unsupported", "compile failed", "parity failed"}


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return export_onnx(make_tiny_cnn(), (1, 1, 28, 28), tmp_path_factory.mktemp("m") / "tiny.onnx")


def test_bench_all_runtimes_all_precisions(onnx_model, tmp_path, capsys):
    out_json, out_csv = tmp_path / "b.json", tmp_path / "b.csv"
    code = main(["bench", str(onnx_model), "--targets", "openvino,ncnn,mnn,onnxruntime", "--precisions", "fp32,fp16,int8",
                 "--data", DATA, "--rounds", "1", "--min-seconds", "0.1", "--json", str(out_json), "--csv", str(out_csv),
                 "--out", str(tmp_path / "arts"), "--no-progress"])
    assert code == 0
    rows = json.loads(out_json.read_text())["rows"]
    assert len(rows) == 12 and {r["status"] for r in rows} <= STATUSES
    by = {(r["runtime"], r["precision"]): r for r in rows}
    for runtime in ("openvino", "ncnn", "mnn", "onnxruntime"):
        fp32 = by[(runtime, "fp32")]
        assert fp32["status"] == "ok", fp32
        assert fp32["top1_agreement"] == 1.0 and fp32["p50_ms"] > 0 and fp32["size_mb"] > 0
    # runtimes that cannot honour a precision say so instead of measuring something else
    assert by[("ncnn", "int8")]["status"] == "unsupported" and by[("ncnn", "int8")]["reason"]
    assert by[("onnxruntime", "fp16")]["status"] == "unsupported"
    for key in (("openvino", "int8"), ("onnxruntime", "int8"), ("mnn", "int8")):
        if by[key]["status"] == "ok":
            assert by[key]["size_mb"] < by[(key[0], "fp32")]["size_mb"]
    for r in rows:
        if r["status"] != "ok":
            assert r["reason"] and r["p50_ms"] is None
    assert len(list(csv.DictReader(out_csv.open()))) == 12
    # every measured row: its p50 with the interval for its median per-round p50, and the rounds taken
    report = json.loads(out_json.read_text())
    ok = [r for r in rows if r["status"] == "ok"]
    assert len({r["rounds"] for r in ok}) == 1 and ok[0]["rounds"] >= 1
    assert report["comparison"]["rounds"] == ok[0]["rounds"]  # "is the fastest faster than the runner-up?"
    assert report["comparison"]["decision"] in ("faster", "slower", "undecided")
    for r in ok:
        if r["p50_low_ms"] is not None:
            assert r["p50_low_ms"] <= r["p50_high_ms"]
    out = capsys.readouterr().out
    assert "| target" in out and "p50_low_ms" in out and report["comparison_sentence"] in out
    assert (tmp_path / "arts" / "bench.json").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--precisions", "fp8"], "unknown precision 'fp8'"),
    (["--targets", "tpu"], "unknown target or runtime 'tpu'"),
])
def test_bench_bad_options(onnx_model, capsys, argv, message):
    assert main(["bench", str(onnx_model), "--data", DATA, "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err


def test_bench_rejects_non_onnx(tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00not a model")
    assert main(["bench", str(bad), "--data", DATA, "--no-progress", "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("edgeprune: error:") and "model.onnx" in err
    assert not (tmp_path / "o").exists()
