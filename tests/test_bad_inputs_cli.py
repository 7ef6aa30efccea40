"""Bad command lines: every malformed or out-of-range flag is one line, exit 2, before any work."""
from __future__ import annotations

import pytest

from tests.badinput import DATA, Case, ids, run_case

BUILD = ["build", "--target", "x86", "--model", "resnet20", "--data", DATA, "--out", "out", "--no-progress",
         "--finetune-epochs", "0"]
BENCH = ["bench", "model.onnx", "--data", DATA, "--no-progress"]
LUT = ["lut", "--target", "x86", "--model", "resnet20", "--no-progress"]
TRAIN = ["train", "--model", "resnet20", "--data", DATA, "--out", "out", "--no-progress"]
PRUNE = ["prune", "--model", "resnet20", "--data", DATA, "--out", "out", "--no-progress"]


def _with(base, *extra):
    return list(base) + list(extra)


CASES = [
    Case("build-finetune-epochs-nan", _with(BUILD, "--finetune-epochs", "nan"), 2, "--finetune-epochs: 'nan' is not a finite"),
    Case("build-finetune-epochs-negative", _with(BUILD, "--finetune-epochs", "-1"), 2, "--finetune-epochs: -1 is outside"),
    Case("build-min-seconds-nan", _with(BUILD, "--min-seconds", "nan"), 2, "--min-seconds: 'nan'"),
    Case("build-min-seconds-huge", _with(BUILD, "--min-seconds", "1e9"), 2, "--min-seconds: 1e9 is outside"),
    Case("build-budget-attempts-0", _with(BUILD, "--budget-attempts", "0"), 2, "--budget-attempts: 0 is outside"),
    Case("build-kd-temperature-0", _with(BUILD, "--kd-temperature", "0"), 2, "--kd-temperature: 0 is outside"),
    Case("build-kd-alpha-2", _with(BUILD, "--kd-alpha", "2"), 2, "--kd-alpha: 2 is outside [0, 1]"),
    Case("build-holdout-0", _with(BUILD, "--holdout-images", "0"), 2, "--holdout-images: 0 is outside"),
    Case("build-calib-0", _with(BUILD, "--calib-images", "0"), 2, "--calib-images: 0 is outside"),
    Case("build-rounds-0", _with(BUILD, "--rounds", "0"), 2, "--rounds: 0 is outside"),
    Case("build-threads-negative", _with(BUILD, "--threads", "-1"), 2, "--threads: -1 is outside"),
    Case("build-ratio-text", _with(BUILD, "--ratio", "half"), 2, "--ratio: 'half' is not a number"),
    Case("build-ratio-inf", _with(BUILD, "--ratio", "inf"), 2, "--ratio: 'inf' is not a finite"),
    Case("build-lr-negative", _with(BUILD, "--lr", "-0.1"), 2, "--lr: -0.1 is outside"),
    Case("build-batch-size-0", _with(BUILD, "--batch-size", "0"), 2, "--batch-size: 0 is outside"),
    Case("build-image-size-2", _with(BUILD, "--image-size", "2"), 2, "--image-size: 2 is outside"),
    Case("build-round-to-0", _with(BUILD, "--round-to", "0"), 2, "--round-to: 0 is outside"),
    Case("build-max-accuracy-drop-negative", _with(BUILD, "--max-accuracy-drop", "-1"), 2, "--max-accuracy-drop: -1"),
    Case("build-min-width-1", _with(BUILD, "--min-width", "1"), 2, "--min-width: 1 is outside [0, 1)"),
    Case("build-eval-limit-0", _with(BUILD, "--eval-limit", "0"), 2, "--eval-limit: 0 is outside"),
    Case("build-precision-fp64", _with(BUILD, "--precision", "fp64"), 2, "invalid choice: 'fp64'"),
    Case("build-no-target", ["build", "--model", "resnet20", "--out", "out"], 2, "required: --target"),
    Case("build-unknown-flag", _with(BUILD, "--ignore", "conv1"), 2, "unrecognized arguments: --ignore"),
    Case("build-method-option-no-equals", _with(BUILD, "--method-option", "sparsity"), 2, "expected KEY=VALUE"),
    Case("build-budget-zero", _with(BUILD, "--budget-ms", "0"), 2, "budget"),
    Case("build-budget-words", _with(BUILD, "--budget", "fast"), 2, "cannot read latency budget 'fast'"),
    Case("build-ssh-timeout-0", _with(BUILD, "--ssh-timeout", "0"), 2, "--ssh-timeout: 0 is outside"),
    Case("bench-targets-empty", _with(BENCH, "--targets", ""), 2, "--targets: expected a comma-separated list"),
    Case("bench-targets-commas", _with(BENCH, "--targets", ",,"), 2, "--targets: expected a comma-separated list"),
    Case("bench-precisions-empty", _with(BENCH, "--precisions", ""), 2, "--precisions: expected"),
    Case("bench-threads-negative", _with(BENCH, "--threads", "-1"), 2, "--threads: -1 is outside"),
    Case("bench-rounds-0", _with(BENCH, "--rounds", "0"), 2, "--rounds: 0 is outside"),
    Case("bench-json-missing-folder", _with(BENCH, "--json", "missing/dir/r.json"), 2, "does not exist"),
    Case("bench-csv-is-a-folder", _with(BENCH, "--csv", "."), 2, "--csv . is a folder"),
    Case("lut-in-stride-0", _with(LUT, "--in-stride", "0"), 2, "--in-stride: 0 is outside"),
    Case("lut-in-stride-negative", _with(LUT, "--in-stride", "-1"), 2, "--in-stride: -1 is outside"),
    Case("lut-input-shape-words", _with(LUT, "--input-shape", "1,3,abc"), 2, "is not 1,C,H,W"),
    Case("lut-input-shape-batch", _with(LUT, "--input-shape", "8,3,32,32"), 2, "is not 1,C,H,W"),
    Case("lut-num-classes-1", _with(LUT, "--num-classes", "1"), 2, "--num-classes: 1 is outside"),
    Case("lut-precision-unknown", _with(LUT, "--precision", "int4"), 2, "invalid choice: 'int4'"),
    Case("train-epochs-0", _with(TRAIN, "--epochs", "0"), 2, "--epochs: 0 is outside"),
    Case("train-epochs-inf", _with(TRAIN, "--epochs", "inf"), 2, "--epochs: 'inf' is not a finite"),
    Case("train-seed-negative", _with(TRAIN, "--seed", "-3"), 2, "--seed: -3 is outside"),
    Case("train-json-is-a-folder", _with(TRAIN, "--json", "."), 2, "--json . is a folder"),
    Case("prune-lr-nan", _with(PRUNE, "--lr", "nan"), 2, "--lr: 'nan'"),
    Case("unknown-command", ["frobnicate"], 2, "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_bad_command_line(case, tmp_path, capsys):
    run_case(case, tmp_path, capsys)


def test_unreachable_device_is_found_before_any_work(tmp_path, capsys):
    """A --device nobody answers on fails at the input check, before the data is even read."""
    import shutil

    if shutil.which("ssh") is None:
        pytest.skip("no ssh client")
    case = Case("build-device-unreachable",
                _with(BUILD, "--device", "nobody@127.0.0.1:1", "--ssh-timeout", "10",
                      "--data", "fashion-mnist:/nonexistent"), 1, "is unreachable")
    run_case(case, tmp_path, capsys)
