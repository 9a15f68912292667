"""Subprocess helper for tests/test_chronos.py: trains a tiny Chronos model with frequent checkpoints.

``python -m tests.chronos_resume_worker WORKDIR FAMILY MAX_STEPS CHECKPOINT_EVERY SLEEP_S``
The progress callback sleeps ``SLEEP_S`` per report so the parent can SIGKILL it mid-run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def make_sine_frame(n_series: int = 6, length: int = 120, period: int = 12, noise: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """A learnable pattern: per-series phase-shifted sines with a level, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n_series):
        t = np.arange(length)
        y = 10 + 3 * np.sin(2 * np.pi * t / period + k) + rng.normal(0, noise, length)
        frames.append(pd.DataFrame({
            "unique_id": f"s{k}", "ds": pd.date_range("2000-01-01", periods=length, freq="MS"), "y": y,
        }))
    return pd.concat(frames, ignore_index=True)


def resume_config(family: str, max_steps: int, checkpoint_every: int):
    from chronos_flows.config.params import ChronosConfig

    return ChronosConfig(
        family=family, context_length=32, max_steps=max_steps, batch_size=8, eval_every=10,
        checkpoint_every=checkpoint_every, learning_rate=1e-3, seed=3, num_threads=1,
    )


HORIZON = 8


def main() -> None:
    workdir, family, max_steps, every, sleep_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    from chronos_flows.models.chronos.forecasters import ChronosForecaster

    cfg = resume_config(family, max_steps, every)
    wd = Path(workdir)
    fc = ChronosForecaster(cfg, workdir=wd, checkpoint_dir=wd / "checkpoints", progress=lambda p: time.sleep(sleep_s))
    fitted = fc.fit(make_sine_frame(), "MS", HORIZON)
    print("finished", fitted.info["steps_done"], flush=True)


if __name__ == "__main__":
    main()
