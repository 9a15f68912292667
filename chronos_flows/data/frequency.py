"""Frequencies of long frames: pandas offsets from aliases, season lengths, inference, grids.

Accepts pre-pandas-3 aliases (M, Q, A, H, T, …); canonicalises anchors that name the same grid
(QS-JAN ≡ QS-APR); infers one frame-wide frequency per series, tolerant of gaps; builds the
regular grid of every series at once (vectorised) and refuses ambiguous spacings. Used by
:mod:`chronos_flows.data.cleaning`, which re-exports the public names.

Pure pandas / numpy; no I/O.
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np
import pandas as pd
from pandas.tseries import offsets as _off
from pandas.tseries.frequencies import to_offset

from chronos_flows.core.errors import BadInputError

ID, TIME = "unique_id", "ds"
_MAX_LISTED = 10
#: A spacing other than one step of the inferred frequency that covers this share of a frame's
#: steps makes the frequency ambiguous (e.g. weekly rows mixed into daily ones).
AMBIGUOUS_SHARE = 0.2

# Aliases pandas 3 no longer parses → their current spelling (pandas >= 2.2 reads both).
_OLD_ALIASES = {
    "M": "ME", "Q": "QE", "A": "YE", "Y": "YE", "H": "h", "T": "min", "S": "s", "L": "ms",
    "U": "us", "N": "ns", "BM": "BME", "BQ": "BQE", "BA": "BYE", "BY": "BYE", "AS": "YS",
    "BAS": "BYS", "SM": "SME", "CBM": "CBME", "BH": "bh", "CBH": "cbh",
}  # fmt: skip


def parse_freq(freq: str) -> _off.BaseOffset:
    """A pandas offset from an alias, accepting pre-pandas-3 spellings (M, Q, A, H, T, …)."""
    try:
        return to_offset(freq)
    except (ValueError, TypeError):
        pass
    m = re.fullmatch(r"\s*([+-]?\d*)\s*([A-Za-z]+)((?:-[A-Za-z]+)?)\s*", str(freq))
    if m and m.group(2).upper() in _OLD_ALIASES:
        prefix = _OLD_ALIASES[m.group(2).upper()]
        try:
            return to_offset(f"{m.group(1)}{prefix}{m.group(3)}")
        except (ValueError, TypeError):
            pass
    raise BadInputError(
        f"cleaning.freq '{freq}' is not a pandas frequency; use an alias such as 'D', 'W-MON', 'MS', "
        "'ME', 'QS', 'YS', 'h' or '30min' (`--set cleaning.freq=W-MON`), or leave it empty to infer it"
    )


def normalize_freq(freq: str) -> str:
    """The canonical spelling of ``freq`` (``'W'`` → ``'W-SUN'``, ``'M'`` → ``'ME'``, ``'QS-APR'`` → ``'QS-JAN'``)."""
    return _canonical_offset(parse_freq(freq)).freqstr


def _canonical_offset(off: _off.BaseOffset) -> _off.BaseOffset:
    # Quarterly anchors that name the same grid (QS-JAN ≡ QS-APR ≡ QS-JUL ≡ QS-OCT) collapse to one.
    if isinstance(off, (_off.QuarterBegin, _off.BQuarterBegin)):
        return type(off)(n=off.n, startingMonth=(off.startingMonth - 1) % 3 + 1)
    if isinstance(off, (_off.QuarterEnd, _off.BQuarterEnd)):
        return type(off)(n=off.n, startingMonth=(off.startingMonth - 1) % 3 + 10)
    return off


_SEASONS: tuple[tuple[tuple[type, ...], float], ...] = (
    ((_off.Week,), 52),
    ((_off.BusinessDay, _off.CustomBusinessDay), 5),
    ((_off.Day,), 7),
    ((_off.BusinessHour, _off.CustomBusinessHour), 8),
    ((_off.Hour,), 24),
    ((_off.Minute,), 24 * 60),
    ((_off.Second,), 60 * 60),
    ((_off.SemiMonthBegin, _off.SemiMonthEnd), 24),
    ((_off.MonthBegin, _off.MonthEnd, _off.BusinessMonthBegin, _off.BusinessMonthEnd,
      _off.CustomBusinessMonthBegin, _off.CustomBusinessMonthEnd, _off.WeekOfMonth, _off.LastWeekOfMonth), 12),
    ((_off.QuarterBegin, _off.QuarterEnd, _off.BQuarterBegin, _off.BQuarterEnd, _off.FY5253Quarter), 4),
)  # fmt: skip


def season_length(freq: str) -> int:
    """Observations per natural season: W→52, D→7, B→5, h→24, 30min→48, ME/MS→12, QE/QS→4, YE/YS→1.

    Multiples divide (2W→26, 3ME→4); a season shorter than 2 steps is 1 (no seasonality).
    """
    off = parse_freq(freq)
    base = next((s for types, s in _SEASONS if isinstance(off, types)), 1)
    steps = base / max(abs(off.n), 1)
    return int(round(steps)) if steps >= 2 else 1


def _infer_index(idx: pd.DatetimeIndex) -> str | None:
    if len(idx) < 3:
        return None
    try:
        off = pd.DatetimeIndex(idx, freq="infer").freq
    except (ValueError, TypeError):
        return None
    return None if off is None else _canonical_offset(off).freqstr


def _fixed_step(off: _off.BaseOffset) -> int | None:
    """Nanoseconds between grid points for fixed-width offsets (D, h, min, W-…), else None."""
    if isinstance(off, _off.Week):
        return 7 * 86_400 * 10**9 * off.n
    if isinstance(off, (_off.Tick, _off.Day)):
        return int(pd.Timedelta(off).value)
    return None


def grids(lo: np.ndarray, hi: np.ndarray, freq: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``freq`` grid from each ``lo`` to ``hi`` (datetime64[ns] arrays, like ``pd.date_range``).

    Returns ``(owner, stamps)``: for each grid point the position of its series in ``lo`` and its
    timestamp. A start off the grid rolls forward (as ``pd.date_range`` does). Vectorised for
    fixed-width offsets and for anchored ones with multiple 1 (MS, QS, YE, B …).
    """
    off = parse_freq(freq)
    lo_i, hi_i = lo.astype("datetime64[ns]").view("i8"), hi.astype("datetime64[ns]").view("i8")
    step = _fixed_step(off)
    if step is not None:
        if isinstance(off, _off.Week) and off.weekday is not None:
            day = 86_400 * 10**9
            weekday = ((lo_i // day) + 3) % 7  # 1970-01-01 was a Thursday (weekday 3)
            lo_i = lo_i + ((off.weekday - weekday) % 7) * day
        counts = np.maximum((hi_i - lo_i) // step + 1, 0)
        owner = np.repeat(np.arange(len(lo_i)), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        stamps = np.repeat(lo_i, counts) + (np.arange(counts.sum()) - first) * step
        return owner, stamps.astype("datetime64[ns]")
    if abs(off.n) == 1:
        grid = pd.date_range(pd.Timestamp(lo_i.min()), pd.Timestamp(hi_i.max()), freq=off).asi8
        start = np.searchsorted(grid, lo_i, side="left")
        stop = np.searchsorted(grid, hi_i, side="right")
        counts = np.maximum(stop - start, 0)
        owner = np.repeat(np.arange(len(lo_i)), counts)
        pos = np.repeat(start - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
        return owner, grid[pos].astype("datetime64[ns]")
    parts = [pd.date_range(pd.Timestamp(a), pd.Timestamp(b), freq=off).asi8 for a, b in zip(lo_i, hi_i)]
    owner = np.repeat(np.arange(len(parts)), [len(g) for g in parts])
    stamps = np.concatenate(parts) if parts else np.array([], dtype="i8")
    return owner, stamps.astype("datetime64[ns]")


def _on_grid(idx: pd.DatetimeIndex, freq: str) -> bool:
    _, grid = grids(idx[:1].to_numpy(), idx[-1:].to_numpy(), freq)
    return len(grid) > 0 and grid[0] == idx[0] and bool(idx.isin(grid).all())


def _series_freq(ds: np.ndarray) -> str | None:
    """Infer one series' frequency; tolerate gaps by inferring on the gap-free stretches."""
    idx = pd.DatetimeIndex(np.unique(ds))
    found = _infer_index(idx)
    if found is not None or len(idx) < 3:
        return found
    diffs = np.diff(idx.asi8)
    breaks = np.flatnonzero(diffs > 1.5 * np.median(diffs)) + 1
    segments = sorted(np.split(np.arange(len(idx)), breaks), key=len, reverse=True)
    tried: set[str] = set()
    for seg in segments[:5]:  # longest gap-free stretches first
        f = _infer_index(idx[seg])
        if f is not None and f not in tried:
            tried.add(f)
            if _on_grid(idx, f):
                return f
    return None


def listing(items: Iterable[str], limit: int = _MAX_LISTED) -> str:
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" … and {len(items) - limit} more" if len(items) > limit else "")


def frame_freq(df: pd.DataFrame) -> str:
    """The one frequency of the series of ``df`` with 3 or more distinct timestamps (shorter ones are
    skipped); BadInputError when one cannot be inferred, none is long enough, or they disagree."""
    per_series: dict[str, str | None] = {}
    too_few: list[str] = []
    for sid, ds in df.groupby(ID, sort=True)[TIME]:
        values = ds.to_numpy()
        if len(np.unique(values)) < 3:
            too_few.append(str(sid))
            continue
        per_series[str(sid)] = _series_freq(values)
    unknown = [s for s, f in per_series.items() if f is None]
    if unknown:
        raise BadInputError(
            f"cannot infer a regular frequency for series {listing(unknown)} (irregular timestamps); "
            "set it explicitly, e.g. `--set cleaning.freq=W-MON` (or D, MS, QS, h …)"
        )
    if not per_series:
        raise BadInputError(
            f"cannot infer the frequency: every series has fewer than 3 distinct timestamps ({listing(too_few)}); "
            "supply longer series or set `--set cleaning.freq=<alias>`"
        )
    groups: dict[str, list[str]] = {}
    for sid, f in per_series.items():
        groups.setdefault(f, []).append(sid)  # type: ignore[arg-type]
    if len(groups) > 1:
        detail = "; ".join(f"{f}: {listing(ids, 3)}" for f, ids in sorted(groups.items(), key=lambda kv: -len(kv[1])))
        raise BadInputError(
            f"series have different frequencies ({detail}); one run needs one frequency: split the file, "
            "or resample the series and set `--set cleaning.freq=<alias>`"
        )
    return next(iter(groups))


def spacing_check(present_pos: np.ndarray, owner: np.ndarray, freq: str) -> None:
    """Refuse an inferred frequency when the observed spacing is ambiguous: two or more spacings
    (in steps of ``freq``) each cover at least ``AMBIGUOUS_SHARE`` of the steps. ``present_pos``: grid positions of the
    observed rows, ``owner``: their series (both sorted by series, then time)."""
    same = owner[1:] == owner[:-1]
    steps = np.diff(present_pos)[same]
    if len(steps) == 0:
        return
    values, counts = np.unique(steps, return_counts=True)
    share = counts / counts.sum()
    common = [(int(v), float(sh)) for v, sh in zip(values, share) if sh >= AMBIGUOUS_SHARE]
    one = float(share[values == 1].sum()) if (values == 1).any() else 0.0
    if len(common) >= 2 or (common and common[0][0] != 1 and one > 0):
        found = ", ".join(f"{v}×{freq} ({sh:.0%} of steps)" for v, sh in sorted(common, key=lambda x: -x[1]))
        if one > 0 and all(v != 1 for v, _ in common):
            found += f", 1×{freq} ({one:.0%})"
        raise BadInputError(
            f"ambiguous frequency: the spacings between observations are {found}; treating the data as {freq} "
            f"would fill most of its points. Set the real frequency with `--set cleaning.freq=<alias>` "
            f"(e.g. W-MON for weekly data) or split the file by frequency"
        )
