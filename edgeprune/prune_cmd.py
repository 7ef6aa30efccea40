"""``edgeprune prune``: prune (by ratio, FLOPs target or latency budget) and fine-tune, no deployment.

Writes ``OUT/pruned.pt`` (pickle-free checkpoint) and ``OUT/prune.json`` (method, channels per
group, accuracy before/after fine-tuning, MACs and params, the budget search if any); the
folder appears only when both are complete.
"""
from __future__ import annotations

from typing import Any

from edgeprune.build import BuildConfig, prepare, prune_and_finetune
from edgeprune.loading import count_flops_params
from edgeprune.models.checkpoint import save_checkpoint
from edgeprune.targets.base import staging_dir, write_json_atomic
from edgeprune.ui import Steps


def run_prune(cfg: BuildConfig) -> dict[str, Any]:
    steps = Steps(4, quiet=not cfg.progress)
    profile, ctx, spec = prepare(cfg, steps)
    pf = prune_and_finetune(cfg, ctx, steps)
    shape = ctx["input_shape"]
    base_macs, base_params = count_flops_params(ctx["model"], shape)
    macs, params = count_flops_params(pf["pruned"], shape)
    summary = {"model": spec, "target": profile["name"], "input_shape": list(shape), "prune": pf["prune"],
               "accuracy": {"baseline": pf["baseline_acc"], "before_finetune": pf["acc_before_ft"],
                            "after_finetune": pf["acc_after_ft"]},
               "flops": {"baseline": base_macs, "pruned": macs}, "params": {"baseline": base_params, "pruned": params},
               "search": pf["search"], "finetune": pf["finetune"]}
    with staging_dir(cfg.out, must_contain="prune.json") as stage:
        save_checkpoint(stage / "pruned.pt", pf["pruned"], spec, {"prune": "prune.json"})
        write_json_atomic(stage / "prune.json", summary)
    return summary
