"""The runtime's channel block, read off a measured latency table.

CPU runtimes lay tensors out in channel blocks of their vector width (oneDNN's nChw8c / nChw16c,
ncnn's elempack 4/8/16): a convolution with 40 output channels then costs what one with 48 costs,
and its latency over output channels is a *staircase* with one step per block. OpenVINO on an
AVX-512 CPU steps every 16 output channels (bench/RESULTS.md §5: a 3x3 convolution at 24x24 with 56
inputs took 38.4, 39.3, 82.0, 80.1, 125.8, 122.1 µs for 8, 16, 24, 32, 40, 48 outputs), while the x86
profile's channel multiple is 8, the block of AVX2. Which block a machine has is not hard-coded here
from CPU flags: it is read from the table this machine's runtime measured.

``channel_block`` tests blocks of 2x and 4x the table's grid step ``m``. For a block ``B``, an output
step from ``c`` to ``c + m`` stays *within* a block unless ``c`` is a multiple of ``B``. Over the
table's convolution rows (every input-channel line whose outputs are measured at consecutive steps of
``m``), the mean latency increase of within-block steps is compared with that of the steps that cross a
block boundary: on a staircase it is near zero, on a line it equals it. ``B`` holds when the ratio is
below ``threshold`` over enough steps; the largest block that holds is the runtime's block.
Lines that barely grow with their outputs (per-inference overhead, not compute) are left out: their
steps are noise.

Used by the budget search (``search.hardware.HardwareSearch`` with ``channel_block``): groups at least
two blocks wide keep multiples of the block. Caveat: the table samples input channels every second grid
step, so only the output side of the staircase is read.

Invariant: the block returned is ``m`` or a multiple of it that the measured rows support; with too
little evidence it is ``m``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

FACTORS = (2, 4)        # blocks tried, as multiples of the table's grid step
THRESHOLD = 0.1         # within-block steps must cost less than this share of boundary steps (a line: 1)
MIN_STEPS = 6           # within-block steps needed before a block is believed
MIN_CROSS = 3           # and steps across a block boundary
MIN_GROWTH = 1.5        # a line must at least grow by this factor over its outputs to count


@dataclass
class BlockEvidence:
    """What ``channel_block`` found: the block and, per block tried, the figures behind the verdict."""

    block: int
    multiple: int
    tried: dict[int, dict[str, float]] = field(default_factory=dict)  # block -> within/cross means (ms), steps, ratio
    lines: int = 0                                                     # table lines that counted

    def summary(self) -> str:
        if self.block == self.multiple:
            return f"no coarser channel block in the measured table (grid {self.multiple}, {self.lines} lines)"
        t = self.tried[self.block]
        return (f"latency steps every {self.block} output channels: a step within a block costs "
                f"{t['ratio']:.0%} of one across blocks ({int(t['within_steps'])} steps, {self.lines} table lines)")

    def to_dict(self) -> dict[str, Any]:
        return {"block": self.block, "multiple": self.multiple, "lines": self.lines,
                "tried": {str(b): v for b, v in self.tried.items()}}


def _lines(rows: Iterable[Any], multiple: int) -> list[list[tuple[int, float]]]:
    """(out, ms) lines of every convolution and fully connected row, one per measured input count, growing enough to count."""
    out = []
    for row in rows:
        if row.sig.kind not in ("conv", "linear"):
            continue
        for i in range(len(row.ins)):
            line = [(o, row.ms[i][j]) for j, o in enumerate(row.outs)
                    if row.ms[i][j] is not None and o % multiple == 0]
            if len(line) < 3:
                continue
            first, last = line[0][1], line[-1][1]
            if first <= 0 or last < MIN_GROWTH * first:
                continue
            out.append(line)
    return out


def channel_block(rows: Iterable[Any], multiple: int, threshold: float = THRESHOLD,
                  min_steps: int = MIN_STEPS) -> BlockEvidence:
    """The coarsest block of output channels (``multiple`` x 1, 2 or 4) the table's rows step by."""
    multiple = max(1, int(multiple))
    lines = _lines(rows, multiple)
    found = BlockEvidence(block=multiple, multiple=multiple, lines=len(lines))
    for factor in FACTORS:
        block = multiple * factor
        within, cross = [], []
        for line in lines:
            for (c0, t0), (c1, t1) in zip(line, line[1:]):
                if c1 - c0 != multiple:
                    continue
                (cross if c0 % block == 0 else within).append(t1 - t0)
        if len(within) < min_steps or len(cross) < MIN_CROSS:
            break
        mean_w, mean_x = sum(within) / len(within), sum(cross) / len(cross)
        ratio = mean_w / mean_x if mean_x > 0 else float("inf")
        found.tried[block] = {"within_ms": mean_w, "cross_ms": mean_x, "within_steps": len(within),
                              "cross_steps": len(cross), "ratio": ratio}
        if ratio >= threshold:
            break
        found.block = block
    return found
