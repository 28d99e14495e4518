"""A step progress bar for commands whose long work is a few big steps (load, fit, sample, write).

tqdm on stderr, shown only when stderr is a terminal and not ``quiet``; the
bar names the running step and counts finished ones, with elapsed time.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


class StepBar:
    """``bar.step("sample")`` marks the previous step done and names the next; ``close()`` finishes."""

    def __init__(self, desc: str, total: int | None = None, quiet: bool = False):
        counted = "{n}/{total} steps done" if total else "{n} steps done"
        self.bar = tqdm(
            total=total,
            desc=desc,
            disable=quiet or not sys.stderr.isatty(),
            leave=False,
            file=sys.stderr,
            # tqdm puts ", " before the postfix: "train: 1 steps done, fit on 9,000 requests [00:12]".
            bar_format="{desc}: " + counted + "{postfix} [{elapsed}]",
        )
        self.started = False

    def step(self, name: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_postfix_str(name)

    def note(self, text: str) -> None:
        """Show progress within the running step."""
        self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.started:
            self.bar.update(1)
        self.bar.close()

    def __enter__(self) -> StepBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
