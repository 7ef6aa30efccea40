"""How the budget search runs: ``SearchSettings`` (``--search`` and its ``--search-*`` flags), checked in one place."""
from __future__ import annotations

from dataclasses import dataclass

from edgeprune.errors import UserInputError

STRATEGIES = ("knapsack", "greedy")


@dataclass
class SearchSettings:
    """How the budget search runs (``--search`` and friends)."""

    strategy: str = "knapsack"     # knapsack (search/allocate.py) or greedy (budget.search_counts alone)
    steps: int = 3                 # knapsack schedule steps
    step_batches: int = 30         # fine-tune mini-batches between steps
    step_lr: float = 0.01
    batch_size: int = 64
    max_cut: float = 0.5           # no group loses more than this share unless the budget needs it
    random_candidates: int = 4
    refits: int = 2                # extra candidate rounds after refitting the predictor on measurements
    near: float = 0.06             # a schedule whose candidate lands more than this share under the budget aims back up
    finalists: int = 8             # candidates given a short fine-tune before the choice (0: BN re-estimation alone)
    finalist_batches: int = 40     # mini-batches of that fine-tune
    calibration_mixed: int = 8     # measured models of each mixed kind (``hardware.CALIBRATION_MIXED_KIND``)
    progressive_steps: int = 8     # steps of the progressive candidate (pruned while fine-tuning); 0: none
    settle: float = 0.5            # share of those steps that train the final network after its last cut
    fill: bool = True              # the progressive uniform schedule's last cut is topped up to its aim (``_fill``)
    top_up: bool = True            # the best one-shot finalist is fine-tuned to the progressive candidates' training
                                   # before the choice (``level``), and a winner still short of it before it is
                                   # returned (``top_up``)
    bn_images: int = 512
    holdout_images: int = 1000
    seed: int = 0
    channel_block: bool = True     # use the runtime's channel block read off the table (off when --round-to is given)

    @property
    def progressive_images(self) -> int:
        """Training images the progressive candidate's weights see inside the search (0 when it is off)."""
        return self.progressive_steps * self.step_batches * self.batch_size

    def training_images(self, finalists: bool) -> int:
        """Training images the most trained candidate sees inside the search: the progressive schedule's, plus the
        finalists' fine-tune when ``finalists`` were probed (0 when nothing trains)."""
        return self.progressive_images + (self.finalist_batches * self.batch_size if finalists else 0)

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserInputError(f"unknown search strategy {self.strategy!r}", f"choose one of: {', '.join(STRATEGIES)}")
        if not 0.0 < self.max_cut <= 1.0:
            raise UserInputError(f"maximum cut per layer must be in (0, 1], got {self.max_cut}", "pass e.g. --max-cut 0.5")
        if self.finalists < 0 or self.finalist_batches < 0:
            raise UserInputError("finalists and their fine-tune batches must be 0 or more",
                                 "pass e.g. --search-finalists 6 --search-finalist-batches 40")
        if self.progressive_steps < 0:
            raise UserInputError(f"progressive steps must be 0 or more, got {self.progressive_steps}",
                                 "pass e.g. --search-progressive-steps 8, or 0 for no progressive candidate")
        if not 0.0 <= self.near < 1.0:
            raise UserInputError(f"the near-budget share must be in [0, 1), got {self.near}", "pass e.g. --search-near 0.06")
        if not 0.0 <= self.settle < 1.0:
            raise UserInputError(f"the settling share must be in [0, 1), got {self.settle}",
                                 "pass e.g. --search-settle 0.5")
        if self.calibration_mixed < 0:
            raise UserInputError(f"calibration models must be 0 or more, got {self.calibration_mixed}",
                                 "pass e.g. --search-calibration 8")

