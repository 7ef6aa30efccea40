"""Shared fixtures: small real models exported to ONNX, and real calibration/held-out data.

The models here are tiny but real CNNs (conv, BN, ReLU, residual add, pooling, linear),
so every runtime compiles and runs them for real in seconds.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

MINI_FMNIST = Path(__file__).parent / "data" / "fashion-mnist-mini"
BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench_script(name: str):
    """The module of ``bench/<name>.py`` (bench scripts are not a package), loaded under ``bench_<name>``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_tiny_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 16):
    import torch
    from torch import nn

    class TinyRes(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
            self.bn3 = nn.BatchNorm2d(2 * width)
            self.fc = nn.Linear(2 * width, num_classes)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x)) + x)
            x = torch.relu(self.bn3(self.conv3(x)))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    torch.manual_seed(0)
    model = TinyRes()
    # Non-trivial BN statistics so folding and parity are exercised.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def export_onnx(model, shape, path: Path) -> Path:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(*shape),), str(path), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["output"],
        )
    return path


@pytest.fixture
def tiny_model():
    return make_tiny_cnn()


@pytest.fixture
def tiny_onnx(tmp_path, tiny_model) -> Path:
    """A real 1x1x28x28 -> 10 CNN exported to ONNX (opset 17)."""
    return export_onnx(tiny_model, (1, 1, 28, 28), tmp_path / "tiny.onnx")


@pytest.fixture
def random_inputs() -> np.ndarray:
    """Deterministic float32 inputs, shape (16, 1, 28, 28)."""
    return np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32)
