"""ncnn and MNN on emulated ARM cores (qemu-user), through the same device protocol as an SSH board.

Invariants checked: on cortex-a76 (ARMv8.2, fp16) an fp16 artifact compiled on the host really
runs fp16 storage and arithmetic on the emulated core (its outputs differ from the fp32 runtime's,
``inspect`` says fp16) and still passes the fp16 parity gate; on the cortex-a72 control (ARMv8.0)
the same artifact is refused for fp16 and ``inspect`` reports fp32 storage and arithmetic (turning
fp16 arithmetic off changes nothing there); rows never carry a latency. The emulated tests need ``scripts/arm64-setup.sh``
(``make test`` runs it) and skip saying why where it could not run; they take about two minutes.
The fallback policy (ncnn fp16: winograd on, then off) is checked without emulation.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from edgeprune.deploy_check import Holdout
from edgeprune.errors import UserInputError
from edgeprune.profiles import load_profile
from edgeprune.remote import arm64_setup, host_compiled
from edgeprune.remote.emulated import NOT_MEASURED, EmulatedDevice, emulation_available, is_emulated

OK, WHY = emulation_available()
emulated = pytest.mark.skipif(not OK, reason=f"arm64 emulation unavailable: {WHY}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The conftest tiny CNN as ONNX plus 8 held-out inputs and its PyTorch logits."""
    import torch

    from tests.conftest import export_onnx, make_tiny_cnn

    model = make_tiny_cnn()
    onnx_path = export_onnx(model, (1, 1, 28, 28), tmp_path_factory.mktemp("emu") / "tiny.onnx")
    x = np.random.default_rng(1).standard_normal((8, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    return onnx_path, Holdout(x, ref.argmax(1), ref)


@pytest.fixture(scope="module")
def a76():
    with EmulatedDevice("cortex-a76") as dev:
        yield dev


@pytest.fixture(scope="module")
def a72():
    with EmulatedDevice("cortex-a72") as dev:
        yield dev


@emulated
def test_ncnn_fp16_on_a76_computes_in_fp16_and_passes_the_gate(a76, tiny, tmp_path):
    onnx_path, holdout = tiny
    row = host_compiled.check_on_device(a76, onnx_path, load_profile("emulated-a76-ncnn"), "fp16", holdout, None,
                                        tmp_path / "fp16")
    assert row["status"] == "ok", row["reason"]
    assert row["device"] == "qemu-aarch64 cortex-a76 (emulated)" and row["latency"] == NOT_MEASURED
    info = row["inspect"]
    assert info["cpu_features"]["ncnn"]["arm_asimdhp"] is True
    assert (info["precision"], info["storage"], info["arithmetic"]) == ("fp16", "fp16", "fp16")
    assert info["differs_from_fp32_runtime"] is True  # proof on the device: fp16 arithmetic changed the outputs
    assert row["settings"] == {"winograd": True} and len(row["attempts"]) == 1
    assert row["parity"]["top1_agreement"] == 1.0 and 1e-5 < row["parity"]["max_rel_diff"] < 0.05
    assert (tmp_path / "fp16" / "result.json").is_file() and (tmp_path / "fp16" / "attempt-0" / "artifact").is_dir()


@emulated
def test_ncnn_fp32_on_a76_matches_torch(a76, tiny, tmp_path):
    onnx_path, holdout = tiny
    row = host_compiled.check_on_device(a76, onnx_path, load_profile("emulated-a76-ncnn"), "fp32", holdout, None,
                                        tmp_path / "fp32")
    assert row["status"] == "ok", row["reason"]
    assert row["inspect"]["precision"] == "fp32" and row["parity"]["max_rel_diff"] < 1e-4


@emulated
def test_a72_control_refuses_fp16_and_reports_fp32_arithmetic(a72, tiny, tmp_path):
    from edgeprune.targets import ncnn

    onnx_path, holdout = tiny
    profile = load_profile("emulated-a72-ncnn")
    row = host_compiled.check_on_device(a72, onnx_path, profile, "fp16", holdout, None, tmp_path / "fp16")
    assert row["status"] == "unsupported" and "fp32 arithmetic" in row["reason"], row["reason"]
    assert row["reason"].startswith("qemu-aarch64 cortex-a72 (emulated): ")
    art = ncnn.compile(onnx_path, "fp16", None, profile, tmp_path / "art")
    info = host_compiled.run_on_device(a72, art.path, None, tmp_path / "got")["inspect"]
    assert info["cpu_features"]["ncnn"]["arm_asimdhp"] is False
    assert (info["precision"], info["storage"], info["arithmetic"]) == ("fp32", "fp32", "fp32")
    # Only InnerProduct's fp16-storage path (ARMv8.0 has fp16 conversions) changes anything: turning fp16
    # arithmetic off changes nothing, every blob stays 4 bytes, so fp16 is not reported.
    assert info["fp16_emulated"] is True and info["blob_bytes_per_element"] == {"4": 9}


@emulated
def test_mnn_low_precision_on_a76_is_fp16_and_passes_the_gate(a76, tiny, tmp_path):
    onnx_path, holdout = tiny
    row = host_compiled.check_on_device(a76, onnx_path, load_profile("emulated-a76-mnn"), "fp16", holdout,
                                        None, tmp_path / "mnn")
    assert row["status"] == "ok", row["reason"]
    info = row["inspect"]
    assert (info["precision"], info["arithmetic"], info["weights"]) == ("fp16", "fp16", "fp16")
    assert info["cpu_features"].get("fp16") is True and not info["fp16_emulated"]
    assert row["parity"]["max_rel_diff"] > 1e-5 and row["latency"] == NOT_MEASURED


@emulated
def test_setup_is_fast_when_done():
    started = time.perf_counter()
    info = arm64_setup.setup(log=lambda msg: pytest.fail(f"setup did work again: {msg}"))
    assert time.perf_counter() - started < 10
    assert info["check"]["cortex-a76"]["asimdhp"] and not info["check"]["cortex-a72"]["asimdhp"]


def test_emulated_profiles_and_cores():
    for name, core in (("emulated-a76-ncnn", "cortex-a76"), ("emulated-a72-ncnn", "cortex-a72"),
                       ("emulated-a76-mnn", "cortex-a76"), ("emulated-a72-mnn", "cortex-a72")):
        prof = load_profile(name)
        assert is_emulated(prof) and prof["emulate"]["core"] == core
    assert not is_emulated(load_profile("arm64"))
    with pytest.raises(UserInputError, match="SVE/SME"):
        EmulatedDevice("max")


def test_missing_setup_is_one_clear_line(tmp_path):
    ok, why = emulation_available(tmp_path)
    assert not ok and "scripts/arm64-setup.sh" in why and "\n" not in why


class _FakeDevice:
    """Stands in for a device in the fallback test: no transport is used (``run_on_device`` is replaced)."""

    label, emulated = "fake", True


def test_ncnn_fp16_falls_back_to_winograd_off_and_says_so(tiny, tmp_path, monkeypatch):
    """The policy alone: a device whose winograd-on fp16 outputs fail the gate and winograd-off pass."""
    from edgeprune.targets import base

    onnx_path, holdout = tiny
    seen = []

    def fake_run(device, artifact_dir, x, dest, **kwargs):
        winograd = base.Artifact.open(artifact_dir).manifest["options"]["ncnn_options"]["use_winograd_convolution"]
        seen.append(winograd)
        noise = np.where(np.arange(holdout.reference.shape[1]) == 0, 100.0, 0.0) if winograd else 0.0
        return {"outputs": holdout.reference + noise, "inspect": {"precision": "fp16"}, "versions": {}}

    monkeypatch.setattr(host_compiled, "run_on_device", fake_run)
    row = host_compiled.check_on_device(_FakeDevice(), onnx_path, load_profile("emulated-a76-ncnn"), "fp16",
                                        holdout, None, tmp_path / "out")
    assert seen == [True, False]
    assert row["status"] == "ok" and row["settings"] == {"winograd": False}
    assert [a["status"] for a in row["attempts"]] == ["parity failed", "ok"]
    assert row["reason"].startswith("passed with winograd off after winograd on failed: top-1 agreement")
    assert row["artifact"] == str(tmp_path / "out" / "attempt-1" / "artifact")


@emulated
def test_bench_shows_emulated_rows_without_latency(tiny, tmp_path, capsys):
    """`edgeprune bench --targets emulated-...`: gated rows from the emulated cores, latency never timed."""
    import json

    from edgeprune.cli import main
    from tests.conftest import MINI_FMNIST

    onnx_path, _ = tiny
    code = main(["bench", str(onnx_path), "--targets", "emulated-a76-ncnn,emulated-a72-ncnn", "--precisions",
                 "fp32,fp16", "--holdout-images", "16", "--data", f"fashion-mnist:{MINI_FMNIST}",
                 "--no-progress", "--json", str(tmp_path / "b.json")])
    assert code == 0
    rows = {(r["target"], r["precision"]): r for r in json.loads((tmp_path / "b.json").read_text())["rows"]}
    assert rows[("emulated-a76-ncnn", "fp16")]["status"] == "ok"
    assert rows[("emulated-a76-ncnn", "fp32")]["p50_ms"] == NOT_MEASURED
    assert rows[("emulated-a72-ncnn", "fp16")]["status"] == "unsupported"
    assert "not measured (emulated)" in capsys.readouterr().out
