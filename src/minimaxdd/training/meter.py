"""What a training run logs: log.jsonl (strict JSON, one line per `log_every` steps) and the logged values'
running mean (for the progress bar) and mean over each epoch (the run's summary)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from minimaxdd.files import WRITE_FAILURES, finite_or_null, raise_if_write_failure


class Meter:
    """The logged values: a running mean (EMA 0.98, for the progress bar) and the mean over each epoch."""

    def __init__(self, epoch: int) -> None:
        self.running: dict[str, float] = {}
        self.sums: dict[str, float] = {}
        self.n, self.epoch = 0, epoch
        self.epoch_means: list[dict] = []

    def add(self, epoch: int, logs: dict[str, float]) -> None:
        if epoch != self.epoch and self.n:
            self.epoch_means.append({"epoch": self.epoch, **{k: v / self.n for k, v in self.sums.items()}})
            self.sums, self.n, self.epoch = {}, 0, epoch
        self.n += 1
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        for k, v in logs.items():
            self.running[k] = v if k not in self.running else 0.98 * self.running[k] + 0.02 * v

    def close(self, per_epoch: int) -> None:
        """The last epoch's mean, marked partial when the run stopped inside it."""
        if self.n:
            self.epoch_means.append({"epoch": self.epoch, "partial": self.n < per_epoch,
                                     **{k: v / self.n for k, v in self.sums.items()}})


def write_log(log: IO[str], record: dict[str, Any]) -> None:
    """One line of log.jsonl, strict JSON (a non-finite value is written as null)."""
    try:
        log.write(json.dumps(finite_or_null(record), allow_nan=False) + "\n")
        log.flush()
    except WRITE_FAILURES as e:
        raise_if_write_failure(Path(log.name), e)
        raise


def log_line(log: IO[str], bar: Any, step: int, logs: dict[str, float], meter: Meter, rate: float) -> None:
    bar.set_postfix(loss=f"{meter.running['loss']:.4f}", img_s=f"{rate:.1f}")
    write_log(log, {"step": step, **{n: round(v, 6) for n, v in logs.items()}, "images_per_s": round(rate, 2)})
