"""Bad input gets one clear line, exit code 2, and no output folder."""
from __future__ import annotations

import pytest

from edgeprune.cli import main
from tests.conftest import MINI_FMNIST

DATA = f"fashion-mnist:{MINI_FMNIST}"


def _build(tmp_path, **over):
    args = {"--target": "x86", "--model": "resnet20", "--data": DATA, "--out": str(tmp_path / "out"),
            "--ratio": "0.5", "--finetune-epochs": "0"}
    args.update(over)
    argv = ["build", "--no-progress"]
    for key, value in args.items():
        if value is not None:
            argv += [key, value]
    return argv


@pytest.mark.parametrize("override, message", [
    ({"--target": "nosuch"}, "unknown target 'nosuch'"),
    ({"--model": "resnet999"}, "resnet999"),
    ({"--ratio": "1.5"}, "--ratio: 1.5 is outside (0, 1)"),
    ({"--ratio": "0"}, "--ratio: 0 is outside (0, 1)"),
    ({"--weights": "/nonexistent/model.pt"}, "weights file not found"),
    ({"--data": "fashion-mnist:/nonexistent/fmnist"}, "not found"),
    ({"--data": "nosuchformat:/tmp"}, "nosuchformat"),
    ({"--precision": "fp16", "--target": "onnxruntime"}, "does not offer precision 'fp16'"),
    ({"--kd-alpha": "1.5"}, "--kd-alpha: 1.5 is outside [0, 1]"),
    ({"--budget-ms": "fast"}, "cannot read latency budget 'fast'"),
])
def test_bad_build_input(tmp_path, capsys, override, message):
    code = main(_build(tmp_path, **override))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("edgeprune: error: ") and message in err[-1]
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_existing_output_folder_is_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(_build(tmp_path)) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_corrupt_checkpoint_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    assert main(_build(tmp_path, **{"--weights": str(bad)})) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("edgeprune: error: ") and "bad.pt" in err[-1]
    assert not (tmp_path / "out").exists()


class Pickled:  # any pickled object, here harmless; weights_only must refuse it
    pass


def test_pickled_checkpoint_needs_opt_in(tmp_path, capsys):
    import torch

    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": {}, "obj": Pickled()}, path)
    assert main(_build(tmp_path, **{"--weights": str(path)})) == 2
    assert "pickled.pt" in capsys.readouterr().err


def test_help_explains(capsys):
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    out = capsys.readouterr().out
    for flag in ("--target", "--ratio", "--finetune-epochs", "--precision", "--weights", "--trust-checkpoint"):
        assert flag in out
