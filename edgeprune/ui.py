"""Terminal output: step lines on stderr, Markdown tables, number formatting.

Invariant: progress and step lines go to stderr; stdout carries only results
(tables, JSON) so ``edgeprune ... --json - | jq`` and ``> table.md`` work.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Sequence


class Steps:
    """Numbered step lines: ``[2/7] pruning (l1, ratio 0.5) ... 1.2 s``."""

    def __init__(self, total: int, quiet: bool = False):
        self.total = total
        self.index = 0
        self.quiet = quiet
        self._start = time.perf_counter()

    def start(self, text: str) -> None:
        self.index += 1
        self._start = time.perf_counter()
        if not self.quiet:
            print(f"[{self.index}/{self.total}] {text}", file=sys.stderr, flush=True)

    def done(self, text: str = "") -> None:
        if not self.quiet:
            took = time.perf_counter() - self._start
            print(f"      {text}{' — ' if text else ''}{took:.1f} s", file=sys.stderr, flush=True)


def info(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def fmt(value: Any, digits: int = 3) -> str:
    """Human formatting for table cells: floats to ``digits`` significant places, None as '—'."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table, columns padded so it also reads in a terminal."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    return "\n".join(lines)
