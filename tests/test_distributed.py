"""Multi-process fine-tuning through a real ``torchrun`` (2 processes, gloo on CPU)."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeprune import ddp as distributed
from edgeprune.data import load_dataset
from edgeprune.models import build_model, model_spec
from edgeprune.models.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MINI = f"fashion-mnist:{ROOT / 'tests' / 'data' / 'fashion-mnist-mini'}"
LINE = re.compile(r"rank (\d)/2: samples=(\d+) fingerprint=(\d+) of (\d+) steps=(\d+) checksum=([0-9a-f]{16})\b")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", PYTHONPATH=str(ROOT))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "edgeprune.distributed", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1)
    return save_checkpoint(tmp_path / "in.pt", model, model_spec("resnet20", num_classes=10, in_channels=1))


def test_torchrun_finetune_two_ranks(checkpoint, tmp_path):
    out = tmp_path / "out.pt"
    proc = _torchrun("finetune", "--checkpoint", str(checkpoint), "--data", MINI, "--epochs", "1",
                     "--batch-size", "64", "--lr", "0.05", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = {int(m[1]): m for m in LINE.finditer(proc.stderr)}
    assert sorted(ranks) == [0, 1], proc.stderr[-3000:]
    n = len(load_dataset(MINI, "train"))
    counts = [int(ranks[r][2]) for r in (0, 1)]
    prints = [int(ranks[r][3]) for r in (0, 1)]
    # disjoint shards covering the whole set: counts add up and the additive multiset digests do too
    assert counts == [n // 2, n // 2] and all(int(ranks[r][4]) == n for r in (0, 1))
    assert prints[0] != prints[1]
    assert (prints[0] + prints[1]) % (1 << 64) == distributed.fingerprint(range(n))
    assert ranks[0][5] == ranks[1][5]  # the same number of steps on both ranks
    assert ranks[0][6] == ranks[1][6]  # identical parameters and buffers at the end
    before, _, _ = load_checkpoint(checkpoint)
    after, spec, meta = load_checkpoint(out)
    assert spec["name"] == "resnet20" and meta["finetune"]["world_size"] == 2
    assert distributed.param_checksum(after) == ranks[0][6]
    changed = [k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert any(k.endswith("weight") for k in changed)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no stray temp files


def test_torchrun_bad_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = _torchrun("finetune", "--checkpoint", str(bad), "--data", MINI, "--epochs", "1",
                     "--out", str(tmp_path / "out.pt"), "--no-progress")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edgeprune: error:")]
    assert errors and all("bad.pt" in line for line in errors)
    assert not (tmp_path / "out.pt").exists()


def test_fingerprint_is_additive_and_shards_partition():
    n, world = 101, 3
    shards = [distributed.epoch_shard(n, 5, 2, r, world) for r in range(world)]
    assert sorted(torch.cat(shards).tolist()) == list(range(n))
    total = sum(distributed.fingerprint(s.tolist()) for s in shards) % (1 << 64)
    assert total == distributed.fingerprint(range(n)) != distributed.fingerprint(range(n - 1))
    assert not distributed.is_distributed() and distributed.rank() == 0 and distributed.world_size() == 1
