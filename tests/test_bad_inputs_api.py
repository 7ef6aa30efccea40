"""Bad inputs to the pruning API and to the CLI's method options: one ``UserInputError`` line each.

API cases call ``prune_channels`` / ``prune_model`` directly; CLI cases go through the shared
harness (``tests.badinput``): exit 2, one ``edgeprune: error:`` line, nothing left behind.
"""
from __future__ import annotations

import pytest
import torch

from edgeprune import prune_channels
from edgeprune.errors import UserInputError
from edgeprune.prune import prune_model
from tests.badinput import DATA, Case, ids, run_case
from tests.conftest import make_tiny_cnn

X = torch.zeros(1, 1, 28, 28)

# (id, keyword arguments over a valid call, fragment of the one-line message)
API_CASES = [
    ("meta-example", {"example_inputs": torch.zeros(1, 1, 28, 28, device="meta")}, "real floating-point batch"),
    ("none-example", {"example_inputs": None}, "example_inputs must be a torch.Tensor"),
    ("int-example", {"example_inputs": torch.zeros(1, 1, 28, 28, dtype=torch.long)}, "floating-point"),
    ("wrong-channels-example", {"example_inputs": torch.zeros(1, 3, 28, 28)}, "cannot run on example inputs"),
    ("string-ratio", {"ratio": "0.5"}, "ratio must be a number"),
    ("model-as-name", {"model": "resnet20"}, "model must be a torch.nn.Module"),
    ("list-method", {"method": ["l1"]}, "unknown pruning method"),
    ("misspelled-keyword", {"round_too": 8}, "unknown option 'round_too'.*did you mean round_to"),
    ("fractional-round-to", {"round_to": 8.5}, "round_to must be a positive whole"),
    ("string-round-to", {"round_to": "8"}, "round_to must be a positive whole"),
    ("min-ratio-one", {"min_ratio": 1.0}, "minimum width"),
    ("min-ratio-string", {"min_ratio": "0.1"}, "minimum width"),
    ("unknown-kept-layer", {"ignored_layers": ("layer9",)}, "--keep names no layer"),
    ("kept-layer-not-a-name", {"ignored_layers": [3]}, "layer names"),
    ("option-for-l1", {"sparsity": 1e-3}, "unknown option 'sparsity' for pruning method l1"),
    ("misspelled-slim-option", {"method": "slim", "sparsityy": 1}, "unknown option 'sparsityy'.*did you mean sparsity"),
    ("slim-option-not-a-number", {"method": "slim", "sparsity": "abc"},
     "sparsity of pruning method slim must be a number"),
    ("slim-passes-fractional", {"method": "slim", "passes": 1.5, "sparsity_epochs": 0}, "passes .* whole number"),
    ("gate-taylor-mode", {"method": "gate", "taylor": "median"}, "taylor of pruning method gate must be one of batch"),
    ("thinet-counts-text", {"method": "thinet", "counts": "abc"}, "counts .* list of whole numbers"),
    ("taylor-batches-text", {"method": "taylor", "taylor_batches": "many"}, "taylor_batches .* whole number"),
    ("taylor-square-text", {"method": "taylor", "taylor_square": "maybe"}, "taylor_square .* true or false"),
]


def _call(entry, **over):
    args = {"model": make_tiny_cnn(), "example_inputs": X, "method": "l1", "ratio": 0.5, "progress": False}
    args.update(over)
    return entry(args.pop("model"), args.pop("example_inputs"), **args)


@pytest.mark.parametrize("over,message", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_bad_api_input_is_one_user_error_line(over, message):
    with pytest.raises(UserInputError, match=message) as info:
        _call(prune_model, **over)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("over,message", [c[1:] for c in API_CASES[:8]], ids=[c[0] for c in API_CASES[:8]])
def test_prune_channels_checks_the_same(over, message):
    with pytest.raises(UserInputError, match=message):
        _call(prune_channels, **over)


def _prune(*extra: str) -> list[str]:
    return ["prune", "--no-progress", "--target", "onnxruntime", "--model", "resnet20", "--data", DATA,
            "--out", "out", "--finetune-epochs", "0", *extra]


CLI_CASES = [
    Case("method-option-misspelled", _prune("--method", "l1", "--method-option", "ratioo=1"), 2,
         "unknown option 'ratioo' for pruning method l1"),
    Case("method-option-not-a-number", _prune("--method", "taylor", "--method-option", "taylor_batches=abc"), 2,
         "taylor_batches of pruning method taylor must be a whole number"),
    Case("method-option-misspelled-taylor", _prune("--method", "taylor", "--method-option", "taylor_batchez=2"), 2,
         "did you mean taylor_batches"),
]
NEEDS_FLAGS = [
    Case("keep-unknown-layer", _prune("--keep", "layer9"), 2, "--keep names no layer"),
    Case("min-width-out-of-range", _prune("--min-width", "1.5"), 2, "--min-width: 1.5 is outside [0, 1)"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=ids(CLI_CASES))
def test_bad_cli_method_options(case, tmp_path, capsys):
    run_case(case, tmp_path, capsys)


@pytest.mark.parametrize("case", NEEDS_FLAGS, ids=ids(NEEDS_FLAGS))
def test_bad_cli_keep_and_min_width(case, tmp_path, capsys):
    run_case(case, tmp_path, capsys)
