"""Training/evaluation loops on the carried Fashion-MNIST subset with small real CNNs."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.data import load_dataset
from edgeprune.errors import UserInputError
from edgeprune.train import augment_batch, evaluate, kd_loss, predict_logits, train

MINI = os.path.join(os.path.dirname(__file__), "data", "fashion-mnist-mini")


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10))


@pytest.fixture(scope="module")
def mini():
    return load_dataset(f"fashion-mnist:{MINI}", "train"), load_dataset(f"fashion-mnist:{MINI}", "test")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_learns_fashion_mnist(mini, seed):
    train_ds, test_ds = mini
    model = small_cnn(seed)
    before = evaluate(model, test_ds, progress=False)
    hist = train(model, train_ds, epochs=3, batch_size=32, lr=0.02, augment=False, seed=seed, progress=False)
    after = evaluate(model, test_ds, progress=False)
    assert before < 0.25 and after >= 0.7, (before, after)  # 0.79-0.83 over seeds 0-7
    assert len(hist["loss"]) == 3 and hist["loss"][-1] < hist["loss"][0] and hist["acc"][-1] > hist["acc"][0]
    assert hist["steps"] == 3 * hist["steps_per_epoch"] == 3 * 19 and hist["seconds"] > 0
    assert not model.training


def test_deterministic_and_augmented(mini):
    runs = []
    for _ in range(2):
        model = small_cnn(0)
        hist = train(model, mini[0], epochs=1, batch_size=64, augment=True, seed=7, progress=False)
        runs.append((hist["loss"], [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    other = train(small_cnn(0), mini[0], epochs=1, batch_size=64, augment=True, seed=8, progress=False)
    assert other["loss"] != runs[0][0]


def test_fractional_epochs_and_max_steps(mini):
    hist = train(small_cnn(), mini[0], epochs=0.25, batch_size=50, progress=False)
    assert hist["steps_per_epoch"] == 12 and hist["steps"] == 3 and len(hist["loss"]) == 1
    hist = train(small_cnn(), mini[0], epochs=2.5, batch_size=50, progress=False)
    assert hist["steps"] == 30 and len(hist["loss"]) == 3
    hist = train(small_cnn(), mini[0], epochs=5, batch_size=50, max_steps=4, progress=False)
    assert hist["steps"] == 4


def test_hook_sees_gradients_and_cosine_lr(mini):
    """With momentum and weight decay off, each step moves a weight by exactly -lr * grad: recover lr."""
    model = small_cnn()
    weight = model[-1].bias
    seen = []

    def hook(m):
        assert m is model and weight.grad is not None
        seen.append((weight.detach().clone(), weight.grad.detach().clone()))

    train(model, mini[0], epochs=1, lr=0.1, momentum=0.0, weight_decay=0.0, batch_size=64, augment=False,
          after_backward=hook, progress=False)
    assert len(seen) == 10
    seen.append((weight.detach().clone(), None))
    for step in range(10):
        (w0, g), (w1, _) = seen[step], seen[step + 1]
        lr = ((w0 - w1) / g)[g.abs() > 1e-4].median().item()
        assert lr == pytest.approx(0.05 * (1 + math.cos(math.pi * step / 10)), rel=1e-3)


def test_knowledge_distillation(mini):
    teacher = small_cnn(1)
    train(teacher, mini[0], epochs=1, batch_size=64, augment=False, progress=False)
    common = dict(epochs=1, batch_size=64, augment=False, seed=0, progress=False)
    plain = train(small_cnn(2), mini[0], **common)
    ignored = train(small_cnn(2), mini[0], teacher=teacher, kd_alpha=0.0, **common)
    kd = train(small_cnn(2), mini[0], teacher=teacher, kd_alpha=0.7, kd_temperature=4.0, **common)
    assert ignored["loss"] == plain["loss"]
    assert kd["loss"] != plain["loss"] and kd["kd_alpha"] == 0.7

    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    assert kd_loss(s, s, y, 1.0, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    p_t = F.softmax(t / 4, 1)
    manual = (p_t * (p_t.log() - F.log_softmax(s / 4, 1))).sum(1).mean() * 16
    expect = 0.3 * F.cross_entropy(s, y) + 0.7 * manual
    assert kd_loss(s, t, y, 0.7, 4.0).item() == pytest.approx(expect.item(), rel=1e-5)


def test_augment_batch_is_shift_and_flip(mini):
    x, _ = mini[0].batch(range(16))
    gen = torch.Generator().manual_seed(0)
    crops = augment_batch(x, gen, flip=False)
    flips = augment_batch(x, torch.Generator().manual_seed(0), flip=True)
    assert crops.shape == x.shape and not torch.equal(crops, x)
    for i in range(16):  # every crop is the image shifted by at most 3 px
        inner = crops[i, 0, 4:-4, 4:-4]
        assert any(torch.equal(inner, x[i, 0, 4 + dy:24 + dy, 4 + dx:24 + dx])
                   for dy in range(-3, 4) for dx in range(-3, 4))
        assert torch.equal(flips[i], crops[i]) or torch.equal(flips[i], crops[i].flip(-1))
    assert any(not torch.equal(flips[i], crops[i]) for i in range(16))


def test_evaluate_and_predict_logits_leave_model_alone(mini):
    model = small_cnn().train()
    bn_mean = model[1].running_mean.clone()
    acc = evaluate(model, mini[1], batch_size=64, progress=False, limit=100)
    assert 0.0 <= acc <= 1.0 and model.training and torch.equal(model[1].running_mean, bn_mean)
    x = mini[1].batch(range(70))[0]
    out = predict_logits(model, x.numpy(), batch_size=32)
    assert out.shape == (70, 10) and out.dtype == np.float32
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    assert np.allclose(out, ref, atol=1e-5) and np.allclose(predict_logits(model, x), out, atol=1e-6)
    assert evaluate(model, mini[1], progress=False) == pytest.approx(np.mean(
        predict_logits(model, mini[1].batch(range(300))[0]).argmax(1) == mini[1].labels))


def test_threads_progress_and_bad_args(mini, capsys):
    before = torch.get_num_threads()
    threads = []
    train(small_cnn(), mini[0], epochs=1, max_steps=2, num_threads=1, desc="tune",
          after_backward=lambda m: threads.append(torch.get_num_threads()))
    assert threads == [1, 1] and torch.get_num_threads() == before
    assert "tune 1/1" in capsys.readouterr().err
    with pytest.raises(UserInputError, match="positive"):
        train(small_cnn(), mini[0], epochs=0, progress=False)
    with pytest.raises(UserInputError, match="kd_alpha"):
        train(small_cnn(), mini[0], epochs=1, teacher=small_cnn(), kd_alpha=1.5, progress=False)
