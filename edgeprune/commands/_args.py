"""Argument parsing shared by every subcommand: the parser class, value types, flag groups.

Invariants: a malformed command line is one ``edgeprune: error: ...`` line and exit 2 (the
parser raises ``UserInputError`` instead of printing its usage); every numeric flag is parsed
by a type here that refuses NaN, infinities and out-of-range values before any work starts,
naming the flag's valid range.
"""
from __future__ import annotations

import argparse
import json
import math
from typing import Callable

from edgeprune.errors import UserInputError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``UserInputError``), not a usage dump."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        command = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        hint = f"see 'edgeprune {command} --help'" if command else "see 'edgeprune --help'"
        raise UserInputError(message, hint)


def _number(kind: Callable[[str], float], text: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def ranged(kind: Callable[[str], float], low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: ``kind`` (int or float), finite, within [low, high] (ends open when asked)."""
    left, right = ("(" if low_open else "["), (")" if high_open else "]")
    span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"

    def parse(text: str) -> float:
        value = _number(kind, text)
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text} is outside {span}")
        return value

    parse.__name__ = f"{kind.__name__} in {span}"
    return parse


POSITIVE_INT = ranged(int, 1)
NONNEG_INT = ranged(int, 0)
POSITIVE_FLOAT = ranged(float, 0, low_open=True)
NONNEG_FLOAT = ranged(float, 0)
OPEN_FRACTION = ranged(float, 0, 1, low_open=True, high_open=True)
UNIT_INTERVAL = ranged(float, 0, 1)
IMAGE_SIZE = ranged(int, 8, 4096)


def comma_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
    return items


def method_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="fashion-mnist",
                   help="dataset: fashion-mnist (Debian's dataset-fashion-mnist), fashion-mnist:DIR, "
                        "cifar10:DIR (python-pickle layout), folder:DIR (class sub-folders), or a DIR "
                        "(layout detected). Default: %(default)s")
    p.add_argument("--image-size", type=IMAGE_SIZE, default=None, metavar="PX",
                   help="resize images to PX x PX (e.g. 224 for mobilenet_v2); default: the data's own size")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars and step lines")


def add_model(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--model", required=required, help="zoo model name (see 'edgeprune models') or package.module:factory")
    if not required:
        p.add_argument("--weights", help="checkpoint from 'edgeprune train', or a state_dict file")
        p.add_argument("--trust-checkpoint", action="store_true",
                       help="load --weights with full pickle (runs code from the file: only for files you trust)")


def add_out(p: argparse.ArgumentParser, required: bool = True, what: str = "output folder") -> None:
    p.add_argument("--out", required=required,
                   help=f"{what} (must not exist; --force replaces only a folder edgeprune wrote)")
    p.add_argument("--force", action="store_true", help="replace --out if it is an earlier edgeprune output")


def add_method(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default=None,
                   help="pruning method, or with --budget-ms the channel importance the search uses: l1, l2, random, "
                        "taylor (first-order Taylor), taylor_bn (Taylor on each group's BN, HALP), slim (Network "
                        "Slimming), gate (Gate Decorator), thinet (ThiNet). Default: taylor_bn with --budget-ms "
                        "and the knapsack search, else l1")
    p.add_argument("--method-option", type=method_option, action="append", default=[], metavar="KEY=VALUE",
                   dest="method_options",
                   help="method-specific setting, repeatable, e.g. sparsity=1e-3 sparsity_epochs=2 (slim), "
                        "tick_ratio=0.05 (gate), samples=2000 (thinet); see each method's module docstring")
    p.add_argument("--flops-target", type=ranged(float, 0, 1, low_open=True), metavar="SHARE",
                   help="for iterative methods (gate): stop when the MACs are at most this share of the original")
    p.add_argument("--ratio", type=OPEN_FRACTION, default=None,
                   help="share of prunable channels to remove, in (0,1). Default: 0.5 (with --max-accuracy-drop "
                        "and no --budget-ms: none; the build searches for the fastest model within the bar)")
    p.add_argument("--allocation", choices=("global", "uniform"), default="global",
                   help="with --ratio: global ranks every channel of every layer together (scores normalised per "
                        "layer); uniform removes the same share from every layer (on the channel multiple), the "
                        "baseline to compare against. Default: %(default)s")
    p.add_argument("--round-to", type=POSITIVE_INT, metavar="N",
                   help="channel multiple to keep; default: the target's channel multiple for the precision, and "
                        "with --budget-ms also the runtime's channel block where its latency table shows one "
                        "(e.g. 16 on AVX-512 OpenVINO) for layers at least two blocks wide")
    p.add_argument("--keep", action="append", default=[], metavar="LAYER", dest="keep_layers",
                   help="never prune this layer (module name such as layer1.0.conv1, or a prefix such as "
                        "layer1); repeatable")
    p.add_argument("--min-width", type=ranged(float, 0, 1, high_open=True), default=0.1, metavar="SHARE",
                   dest="min_width",
                   help="every pruned layer keeps at least this share of its channels. Default: %(default)s")


def add_finetune(p: argparse.ArgumentParser) -> None:
    p.add_argument("--finetune-epochs", type=NONNEG_FLOAT, default=1.0,
                   help="fine-tuning epochs (fractions allowed, 0 skips). Default: %(default)s")
    p.add_argument("--lr", type=POSITIVE_FLOAT, default=0.01, help="fine-tuning learning rate. Default: %(default)s")
    p.add_argument("--batch-size", type=ranged(int, 1, 65536), default=128, help="Default: %(default)s")
    p.add_argument("--augment", action="store_true", help="random crop + flip while fine-tuning (helps runs of many epochs)")
    p.add_argument("--seed", type=NONNEG_INT, default=0, help="random seed. Default: %(default)s")
    p.add_argument("--kd-alpha", type=UNIT_INTERVAL, default=0.0,
                   help="knowledge distillation while fine-tuning: weight of the loss against the unpruned model's "
                        "soft outputs, in [0,1] (0 = off). Default: %(default)s")
    p.add_argument("--kd-temperature", type=POSITIVE_FLOAT, default=4.0,
                   help="distillation temperature, > 0. Default: %(default)s")


def add_samples(p: argparse.ArgumentParser) -> None:
    p.add_argument("--holdout-images", type=POSITIVE_INT, default=500, dest="holdout",
                   help="held-out test images for the parity/accuracy gates. Default: %(default)s")
    p.add_argument("--calib-images", type=POSITIVE_INT, default=300, dest="calib",
                   help="training images for int8 calibration. Default: %(default)s")


def add_measure(p: argparse.ArgumentParser, rounds: int = 3) -> None:
    p.add_argument("--threads", type=NONNEG_INT,
                   help="runtime threads for measurement, up to this machine's cores (0 = all cores); "
                        "default: the target's")
    p.add_argument("--rounds", type=ranged(int, 1, 1000), default=rounds,
                   help="minimum interleaved measurement rounds per model, in [1, 1000]. Default: %(default)s")
    p.add_argument("--max-rounds", type=ranged(int, 1, 1000), default=None, metavar="N",
                   help="cap on the rounds: after --rounds, rounds are added one at a time until the comparison "
                        "(within the budget? faster?) is decided at --confidence, at most N in all. "
                        "Default: 15 (or --rounds, if more)")
    p.add_argument("--confidence", type=ranged(float, 0.5, 1, high_open=True), default=0.95,
                   help="confidence at which a comparison is decided, in [0.5, 1). Default: %(default)s")
    p.add_argument("--min-seconds", type=ranged(float, 0, 3600, low_open=True), default=2.0,
                   help="minimum timed seconds per measurement, in (0, 3600]. Default: %(default)s")


def add_json(p: argparse.ArgumentParser, what: str = "the report") -> None:
    p.add_argument("--json", metavar="FILE", help=f"also write {what} as JSON to FILE ('-' for stdout)")


def add_search(p: argparse.ArgumentParser) -> None:
    """Flags of the latency-budget search (``--budget-ms``)."""
    g = p.add_argument_group("latency-budget search (with --budget-ms)")
    g.add_argument("--search", choices=("knapsack", "greedy"), default="knapsack",
                   help="knapsack: iterative latency-saliency knapsack on the target's latency table, then the "
                        "candidates (knapsack, progressive, uniform, greedy, random allocations) compared by accuracy after BN "
                        "re-estimation on held-out training images; greedy: the earlier importance-per-ms greedy "
                        "search alone. Default: %(default)s")
    g.add_argument("--search-steps", type=ranged(int, 1, 100), default=3, metavar="N",
                   help="knapsack steps from the baseline's latency down to the budget, each followed by a short "
                        "fine-tune. Default: %(default)s")
    g.add_argument("--search-step-batches", type=ranged(int, 0, 100000), default=30, metavar="N",
                   help="fine-tune mini-batches between knapsack steps. Default: %(default)s")
    g.add_argument("--search-candidates", type=ranged(int, 0, 100), default=4, metavar="N",
                   help="random allocations within the budget added to the candidates. Default: %(default)s")
    g.add_argument("--max-cut", type=ranged(float, 0, 1, low_open=True), default=0.5, metavar="SHARE",
                   help="no layer loses more than this share of its channels unless the budget needs it (then the "
                        "cap is raised in steps of 0.1, and the report says so). Default: %(default)s")
    g.add_argument("--search-holdout", type=ranged(int, 10, 1000000), default=1000, metavar="N",
                   help="held-out training images the candidates are compared on. Default: %(default)s")
    g.add_argument("--search-finalists", type=ranged(int, 0, 100), default=8, metavar="N",
                   help="candidates (the best of each kind first) fine-tuned briefly before the choice, because "
                        "accuracy right after a deep cut ranks them poorly; 0 chooses on BN re-estimation alone. "
                        "Default: %(default)s")
    g.add_argument("--search-finalist-batches", type=ranged(int, 0, 100000), default=40, metavar="N",
                   help="mini-batches of the finalists' fine-tune (0: none). Default: %(default)s")
    g.add_argument("--search-calibration", type=ranged(int, 0, 100), default=8, metavar="N",
                   help="calibration models of each of two kinds: N with a random half of the layer groups each "
                        "cut to its own random depth (keeping 25-75%% of its channels), and N with every group cut "
                        "(keeping 10-100%%), measured on the target together with "
                        "the unpruned model and three uniform cuts to calibrate the latency predictor before the "
                        "search (the one-off cost of a search, with the latency table). Fewer is quicker and "
                        "steers less surely; 0 calibrates on the uniform cuts alone. Default: %(default)s")
    g.add_argument("--search-progressive-steps", type=ranged(int, 0, 100), default=8, metavar="N",
                   help="adds two progressive candidates, pruned while they train: N knapsack steps down to the "
                        "budget, and N uniform steps, each followed by --search-step-batches mini-batches of "
                        "fine-tuning, so the two allocations compete at equal training; they keep the weights "
                        "they trained (as does the knapsack schedule's own trained candidate). 0: none. "
                        "Default: %(default)s")
    g.add_argument("--search-settle", type=ranged(float, 0, 1, high_open=True), default=0.5, metavar="SHARE",
                   help="share of the progressive steps that train the final network after its last cut (the "
                        "cuts come first, so little training is spent on channels a later cut removes); 0 spreads "
                        "the cuts over every step. Default: %(default)s")
    g.add_argument("--search-top-up", action=argparse.BooleanOptionalAction, default=True,
                   help="compare and return candidates at equal training: the best one-shot finalist (e.g. uniform "
                        "pruning or a random allocation on the original weights) is fine-tuned inside the search "
                        "until it has trained as long as the progressive candidates did before the choice, and a "
                        "winner still short of that before it is returned (otherwise the choice and the build's "
                        "model reward training, not allocation); --no-search-top-up compares and returns them as "
                        "they are. Default: on")
    g.add_argument("--search-refits", type=ranged(int, 0, 10), default=2, metavar="N",
                   help="extra rounds of candidates while one of the three schedules (the knapsack's, the "
                        "progressive knapsack's, the progressive uniform one's) misses the budget by measurement or "
                        "lands more than --search-near under it (or most other candidates miss): each refits the "
                        "predictor on every measurement so far and reruns that schedule at an aim taken from its "
                        "own measurements. Default: %(default)s")
    g.add_argument("--search-near", type=ranged(float, 0, 0.5), default=0.06, metavar="SHARE",
                   help="a schedule whose best candidate measures more than this share under the budget gets "
                        "another round aimed back up (at 1 - SHARE/2 of the budget), so the search does not give "
                        "away latency the budget allows; and a candidate measured within SHARE/2 of the budget, "
                        "either side, is measured a second time and judged on the mean. 0: any candidate within "
                        "the budget will do, on one measurement. Default: %(default)s")
