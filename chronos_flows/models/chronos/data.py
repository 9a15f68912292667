"""Chronos training data: per-series arrays, the training-frame fingerprint, the train/validation
split and the seeded window sampler shared by every family's training routine."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

from chronos_flows.core.errors import BadInputError
from chronos_flows.models.base import ID, TARGET, TIME

logger = logging.getLogger("chronos_flows.train")


def series_blocks(frame: pd.DataFrame) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """``(ids, arrays, last_ds)``: per-series float32 arrays sorted by time, ids in sorted order and
    each series' last timestamp, from a long ``unique_id/ds/y`` frame. Vectorised (one factorize,
    one lexsort, one split): on large panels a per-series pandas loop costs more than the model."""
    missing = [c for c in (ID, TIME, TARGET) if c not in frame.columns]
    if missing:
        raise BadInputError(f"training frame is missing column(s) {', '.join(missing)}; expected unique_id, ds, y")
    if frame.empty:
        raise BadInputError("training frame is empty; nothing to train on")
    codes, uniques = pd.factorize(frame[ID].astype(str), sort=True)
    times = pd.to_datetime(frame[TIME]).to_numpy()
    order = np.lexsort((times, codes))
    codes = codes[order]
    y = frame[TARGET].to_numpy(dtype=np.float32, na_value=np.nan)[order]
    bounds = np.flatnonzero(np.diff(codes)) + 1
    ends = np.r_[bounds, len(codes)] - 1
    return [str(u) for u in uniques], np.split(y, bounds), times[order][ends]


def series_arrays(frame: pd.DataFrame) -> tuple[list[str], list[np.ndarray]]:
    """Per-series float32 arrays (sorted by time) from a long ``unique_id/ds/y`` frame."""
    ids, arrays, _ = series_blocks(frame)
    return ids, arrays


def data_fingerprint(frame: pd.DataFrame, horizon: int) -> str:
    """A content hash of the training frame (ids, timestamps, values) and the horizon: the
    ``training_data_fingerprint`` of a Chronos model and its checkpoints. Not the run's
    ``data_fingerprint`` (the hash of the whole cleaned dataset, ``chronos_flows.data.ingest.fingerprint``):
    the training frame leaves out the backtest windows."""
    cols = [c for c in (ID, TIME, TARGET) if c in frame.columns]
    h = hashlib.sha256()
    h.update(pd.util.hash_pandas_object(frame[cols].sort_values(cols[:2]), index=False).to_numpy().tobytes())
    h.update(f"h={horizon}".encode())
    return h.hexdigest()[:32]


#: Validation windows held out at the end of each series (rolling, ``horizon`` apart). One window of a
#: single series is too noisy to choose a checkpoint: on the gasoline series its loss and the backtest
#: disagreed; several consecutive windows track the backtest.
VAL_WINDOWS = 4


@dataclass
class TrainData:
    train: list[np.ndarray]  # training part of each usable series (final validation span held out)
    val: list[np.ndarray]  # validation inputs: each one's final horizon is a validation window
    min_past: int
    skipped: list[str] = field(default_factory=list)


def split_train_val(ids: list[str], arrays: list[np.ndarray], horizon: int, val_windows: Optional[int] = None) -> TrainData:
    """Hold out each series' final ``k × horizon`` points as ``k`` rolling validation windows.

    ``k`` is ``val_windows`` (default :data:`VAL_WINDOWS`), fewer for a series whose training part would
    otherwise be too short. A training window needs ``min_past + horizon`` points with
    ``min_past = horizon`` (as upstream's default). Series too short to train on are skipped; when none
    can also give a validation window, training runs on the full series without validation (logged).
    """
    k_max = max(1, int(VAL_WINDOWS if val_windows is None else val_windows))
    min_past = max(1, horizon)
    need = min_past + horizon
    train, val, skipped = [], [], []
    for uid, a in zip(ids, arrays):
        k = k_max
        while k > 1 and len(a) - k * horizon < max(need, len(a) // 2):  # never hold out more than half a series
            k -= 1
        if len(a) - k * horizon >= need:
            train.append(a[: len(a) - k * horizon])
            val.extend(a[: len(a) - j * horizon] for j in range(k))
        elif len(a) >= need:
            train.append(a)  # too short to also hold out a window
            skipped.append(uid)
        else:
            skipped.append(uid)
    if not train:
        shortest = min(zip(ids, arrays), key=lambda t: len(t[1]))
        raise BadInputError(
            f"no series is long enough to train on: each needs at least {need} points (2 × horizon {horizon}); "
            f"the shortest is {shortest[0]!r} with {len(shortest[1])}; shorten evaluation.horizon or use mode zero-shot"
        )
    if skipped:
        logger.warning("%d series too short for a training+validation window: %s", len(skipped), ", ".join(skipped[:10]))
    return TrainData(train=train, val=val, min_past=min_past, skipped=skipped)


class WindowSampler:
    """Seeded random (context, target) windows: series chosen in proportion to their window count."""

    def __init__(self, series: list[np.ndarray], context_length: int, horizon: int, min_past: int, seed: int):
        self.C, self.H, self.min_past = context_length, horizon, min_past
        self.padded = [np.concatenate([np.full(context_length, np.nan, np.float32), s]) for s in series]
        counts = np.array([len(s) - min_past - horizon + 1 for s in series], dtype=np.float64)
        self.series = [i for i, c in enumerate(counts) if c > 0]
        self.lengths = np.array([len(series[i]) for i in self.series])
        w = counts[self.series]
        self.p = w / w.sum()
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        pick = self.rng.choice(len(self.series), size=n, p=self.p)
        ctx = np.empty((n, self.C), np.float32)
        tgt = np.empty((n, self.H), np.float32)
        for j, k in enumerate(pick):
            length = self.lengths[k]
            t = int(self.rng.integers(self.min_past, length - self.H + 1))  # cut point in the unpadded series
            s = self.padded[self.series[k]]
            ctx[j] = s[t : t + self.C]
            tgt[j] = s[t + self.C : t + self.C + self.H]
        return ctx, tgt

    def get_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def validation_windows(val: list[np.ndarray], context_length: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    ctx = np.full((len(val), context_length), np.nan, np.float32)
    tgt = np.empty((len(val), horizon), np.float32)
    for j, s in enumerate(val):
        past = s[:-horizon][-context_length:]
        ctx[j, context_length - len(past):] = past
        tgt[j] = s[-horizon:]
    return ctx, tgt
