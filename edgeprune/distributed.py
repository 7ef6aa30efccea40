"""Multi-process fine-tuning under ``torchrun`` (DistributedDataParallel).

Invariants:
- Every process of a run draws the same index permutation per epoch (a generator seeded
  only by ``seed`` and the epoch) and takes the slice ``order[rank::world]``: the ranks'
  shards partition the data set, and each rank runs the same number of steps, so DDP's
  gradient all-reduce (the only averaging; none is done by hand) pairs up step by step.
- After training, rank 0's buffers (BatchNorm statistics) are broadcast, so every rank ends
  with identical parameters and buffers; only rank 0 shows progress and writes files.
- ``main`` is ``torchrun --nproc_per_node=N -m edgeprune.distributed finetune ...``; the output
  checkpoint is written atomically by rank 0 with ``save_checkpoint``; every user error is one
  ``edgeprune: error: ...`` line and a non-zero exit on the rank(s) that saw it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from edgeprune.ddp import barrier, cleanup, init_from_env, param_checksum, rank, world_size
from edgeprune.errors import EdgepruneError, UserInputError


# ---- the torchrun entry point ----

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchrun ... -m edgeprune.distributed",
                                description="Fine-tune an edgeprune checkpoint on several processes (DDP).")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("finetune", help="fine-tune a (pruned) checkpoint and write a new one (rank 0)")
    f.add_argument("--checkpoint", required=True, help="edgeprune checkpoint to fine-tune")
    f.add_argument("--data", required=True, help="data spec, e.g. fashion-mnist:DIR")
    f.add_argument("--epochs", type=float, required=True)
    f.add_argument("--out", required=True, help="output checkpoint file")
    f.add_argument("--lr", type=float, default=0.01)
    f.add_argument("--batch-size", type=int, default=64, help="per process")
    f.add_argument("--image-size", type=int, default=None)
    f.add_argument("--augment", action="store_true")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--teacher", default=None, help="edgeprune checkpoint of a teacher for distillation")
    f.add_argument("--kd-alpha", type=float, default=0.0)
    f.add_argument("--kd-temperature", type=float, default=4.0)
    f.add_argument("--no-progress", action="store_true")
    return p


def _check_out(out: Path) -> Path:
    if not out.parent.resolve().is_dir():
        raise UserInputError(f"folder of --out does not exist: {out.parent}", "create it first")
    if out.is_dir():
        raise UserInputError(f"--out {out} is a folder", "pass a file name such as model_ft.pt")
    return out


def _log(message: str) -> None:
    # one write call per line, so the ranks' lines on a shared stderr never interleave mid-line
    sys.stderr.write(f"edgeprune.distributed: rank {rank()}/{world_size()}: {message}\n")
    sys.stderr.flush()


def finetune(args: argparse.Namespace) -> dict:
    """Load, fine-tune under DDP, and (rank 0) save; returns the training history."""
    from edgeprune.data import load_dataset
    from edgeprune.models.checkpoint import load_checkpoint, save_checkpoint
    from edgeprune.train import train

    out = _check_out(Path(args.out))
    if args.teacher is None and args.kd_alpha > 0:
        raise UserInputError("--kd-alpha needs a --teacher checkpoint", "pass --teacher TEACHER.pt")
    model, spec, meta = load_checkpoint(args.checkpoint)
    teacher = load_checkpoint(args.teacher)[0] if args.teacher else None
    ds = load_dataset(args.data, "train", image_size=args.image_size)
    history = train(model, ds, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, augment=args.augment,
                    teacher=teacher, kd_alpha=args.kd_alpha, kd_temperature=args.kd_temperature,
                    progress=not args.no_progress, seed=args.seed, desc="finetune")
    _log(f"samples={history['samples']} fingerprint={history['fingerprint']} of {len(ds)} "
         f"steps={history['steps']} checksum={param_checksum(model)}")
    if rank() == 0:
        meta = dict(meta, finetune={"epochs": args.epochs, "lr": args.lr, "world_size": world_size(),
                                    "data": ds.name, "loss": history["loss"][-1]})
        save_checkpoint(out, model, spec, meta)
        _log(f"wrote {out}")
    barrier()
    return history


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        init_from_env()
        finetune(args)
    except EdgepruneError as exc:
        sys.stderr.write(f"edgeprune: error: {exc.one_line()}\n")
        return exc.exit_code
    except RuntimeError as exc:  # gloo/nccl failures: a peer died or the rendezvous failed
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        sys.stderr.write(f"edgeprune: error: distributed run failed on rank {rank()}: {first}\n")
        return 1
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
