"""Progress bars for the command line, fed by the library's (done, total) callbacks.

The library reports counts only; tqdm is imported on the first update, so commands
that never show a bar do not pay for it.
"""

from __future__ import annotations

import sys


class ProgressBar:
    """A tqdm bar fed by (done, total) callbacks; created on the first call."""

    def __init__(self, desc: str, unit: str = "img", leave: bool = True) -> None:
        self.desc, self.unit, self.leave, self.bar = desc, unit, leave, None

    def __call__(self, done: int, total: int | None) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, unit_scale=self.unit != "batch",
                            leave=self.leave, file=sys.stderr)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class EpochBars:
    """A batch bar for the epoch in progress, fed by the trainer's (epoch, done, total) callback;
    it disappears when the epoch ends, leaving the epoch's summary line."""

    def __init__(self, epochs: int) -> None:
        self.epochs, self.epoch, self.bar = epochs, 0, ProgressBar("")

    def __call__(self, epoch: int, done: int, total: int) -> None:
        if epoch != self.epoch:
            self.close()
            self.epoch, self.bar = epoch, ProgressBar(f"epoch {epoch}/{self.epochs}", unit="batch", leave=False)
        self.bar(done, total)
        if done == total:
            self.close()

    def close(self) -> None:
        self.bar.close()
        self.bar = ProgressBar("")
