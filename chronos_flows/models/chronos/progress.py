"""What every Chronos training routine shares: the training state carried in checkpoints (step,
history, best validation loss, early stopping), the progress reporter (log line + callback with
throughput and ETA) and the schedule settings derived from the config."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from chronos_flows.config.params import ChronosConfig

logger = logging.getLogger("chronos_flows.train")

#: Restore the weights of the best validation step at the end of training.
RESTORE_BEST = True


@dataclass
class TrainState:
    step: int = 0
    history: list[dict] = field(default_factory=list)
    best_val: Optional[float] = None
    best_step: Optional[int] = None
    bad_evals: int = 0
    stopped_early: bool = False
    resumed_from: Optional[int] = None
    last_val: Optional[float] = None

    def to_meta(self) -> dict:
        return {
            "step": self.step, "history": self.history, "best_val": self.best_val, "best_step": self.best_step,
            "bad_evals": self.bad_evals, "stopped_early": self.stopped_early,
        }

    @classmethod
    def from_meta(cls, meta: dict) -> "TrainState":
        return cls(
            step=int(meta["step"]), history=list(meta.get("history", [])), best_val=meta.get("best_val"),
            best_step=meta.get("best_step"), bad_evals=int(meta.get("bad_evals", 0)),
            stopped_early=bool(meta.get("stopped_early", False)), resumed_from=int(meta["step"]),
        )

    def record_validation(self, step: int, val_loss: float, patience: Optional[int]) -> bool:
        """Record a validation loss; True when it is the best so far (the caller keeps those weights).
        ``patience`` evaluations in a row without improvement set ``stopped_early``."""
        self.last_val = val_loss
        if self.best_val is None or val_loss < self.best_val:
            self.best_val, self.best_step, self.bad_evals = val_loss, step, 0
            return True
        self.bad_evals += 1
        if patience and self.bad_evals >= patience:
            self.stopped_early = True
            logger.info("early stopping at step %d: no validation improvement in %d evaluations (best %.4g at step %s)",
                        step, self.bad_evals, self.best_val, self.best_step)
        return False


class Reporter:
    """Log lines + progress callback with step, loss, throughput and ETA."""

    def __init__(self, max_steps: int, windows_per_step: int, progress: Optional[Callable[[dict], None]], start_step: int):
        self.max_steps = max_steps
        self.windows_per_step = windows_per_step
        self.progress = progress
        self.t0 = time.perf_counter()
        self.start_step = start_step
        self.elapsed_before = 0.0

    @classmethod
    def resuming(cls, state: TrainState, max_steps: int, windows_per_step: int,
                 progress: Optional[Callable[[dict], None]]) -> "Reporter":
        """A reporter starting at ``state.step`` whose elapsed time continues the history's."""
        reporter = cls(max_steps, windows_per_step, progress, state.step)
        reporter.elapsed_before = state.history[-1]["elapsed_s"] if state.history else 0.0
        return reporter

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def rate(self, step: int) -> float:
        dt = time.perf_counter() - self.t0
        return (step - self.start_step) * self.windows_per_step / dt if dt > 0 else 0.0

    def report(self, step: int, loss: Optional[float], val_loss: Optional[float], lr: Optional[float]) -> None:
        dt = time.perf_counter() - self.t0
        steps_done = step - self.start_step
        steps_per_s = steps_done / dt if dt > 0 and steps_done > 0 else 0.0
        eta = (self.max_steps - step) / steps_per_s if steps_per_s > 0 else None
        wps = steps_per_s * self.windows_per_step
        logger.info(
            "step %d/%d loss %s val_loss %s lr %s %.1f windows/s ETA %s",
            step, self.max_steps, fmt(loss), fmt(val_loss), fmt(lr), wps,
            f"{eta:.0f}s" if eta is not None else "?",
        )
        if self.progress is not None:
            self.progress({
                "step": step, "max_steps": self.max_steps, "loss": loss, "val_loss": val_loss,
                "windows_per_s": wps, "eta_s": eta,
            })


def fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.4g}"


def log_every_of(cfg: ChronosConfig) -> int:
    return int(getattr(cfg, "log_every", None) or max(1, min(10, cfg.eval_every, cfg.checkpoint_every)))


def scheduler_name(cfg: ChronosConfig) -> str:
    name = cfg.lr_scheduler
    if name == "constant" and cfg.warmup_ratio > 0:
        return "constant_with_warmup"
    return name


def warmup_steps(cfg: ChronosConfig) -> int:
    return int(math.floor(cfg.warmup_ratio * cfg.max_steps))
