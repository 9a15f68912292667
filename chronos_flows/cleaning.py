"""Clean the canonical long frame into regular, gap-free series ready for training.

Steps (:func:`clean`): sort → one regular frequency for the frame (``cleaning.freq`` or inferred
per series) → combine duplicate timestamps (``cleaning.duplicates``) → regularise to the frequency
(missing timestamps inserted) → trim leading/trailing missing values and fill interior gaps
(``cleaning.fill_method``) → length checks (shorter than ``horizon + 1``: error; shorter than
``min_length``: dropped and reported) → robust-STL outlier detection (residuals beyond
``outlier_iqr_k`` × IQR from the quartiles, flagged in ``is_outlier``; ``replace`` swaps them for
trend + seasonal). Everything done is counted per series in a :class:`CleaningReport`.

Pure pandas / statsmodels; no I/O.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import numpy as np
import pandas as pd
from pandas.tseries import offsets as _off
from pandas.tseries.frequencies import to_offset
from pydantic import BaseModel, ConfigDict

from chronos_flows.config import CleaningConfig
from chronos_flows.errors import BadInputError

ID, TIME, TARGET, OUTLIER = "unique_id", "ds", "y", "is_outlier"
_MAX_LISTED = 10
#: Robust STL needs this many full seasons: with fewer its seasonal and trend smoothers (nearly)
#: interpolate the data, the residual IQR collapses towards 0 and noise gets flagged (measured on
#: Gaussian noise with period 52: IQR 2e-15 at 2 seasons, 7e-5 at 3, 0.23 at 4 vs 0.6-0.8 at 5+).
MIN_STL_SEASONS = 5

# Aliases pandas 3 no longer parses → their current spelling (pandas >= 2.2 reads both).
_OLD_ALIASES = {
    "M": "ME", "Q": "QE", "A": "YE", "Y": "YE", "H": "h", "T": "min", "S": "s", "L": "ms",
    "U": "us", "N": "ns", "BM": "BME", "BQ": "BQE", "BA": "BYE", "BY": "BYE", "AS": "YS",
    "BAS": "BYS", "SM": "SME", "CBM": "CBME", "BH": "bh", "CBH": "cbh",
}  # fmt: skip


# --------------------------------------------------------------------------------------- report
class CleaningReport(BaseModel):
    """What :func:`clean` did, per series and overall (JSON-able, frozen)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    freq: str
    season_length: int
    rows_in: int
    rows_out: int
    series_in: int
    series_out: int
    duplicates_resolved_rule: str
    fill_method: str
    #: every input series: rows_in, rows_out (0 when dropped), duplicates, gaps_filled, trimmed, outliers
    per_series: dict[str, dict[str, int]]
    #: series left out of the output → reason
    dropped: dict[str, str]
    outlier_method: str
    #: series on which outlier detection did not run → reason
    outlier_skipped: dict[str, str] = {}
    #: every normalisation applied to the input (sorting, timezone, duplicates, non-finite values …)
    notes: list[str] = []
    #: heavy repairs a reviewer must see (quoted in the run summary and the champion decision)
    warnings: list[str] = []

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def totals(self) -> dict[str, int]:
        keys = ("duplicates", "gaps_filled", "trimmed", "outliers")
        return {k: int(sum(s.get(k, 0) for s in self.per_series.values())) for k in keys}

    def to_markdown(self, max_series: int = 20) -> str:
        t = self.totals()
        lines = [
            "### Cleaning report",
            "",
            "| | |",
            "|---|---|",
            f"| frequency | `{self.freq}` (season length {self.season_length}) |",
            f"| rows | {self.rows_in} → {self.rows_out} |",
            f"| series | {self.series_in} → {self.series_out} ({len(self.dropped)} dropped) |",
            f"| duplicates combined ({self.duplicates_resolved_rule}) | {t['duplicates']} |",
            f"| gaps filled ({self.fill_method}) | {t['gaps_filled']} |",
            f"| leading/trailing missing trimmed | {t['trimmed']} |",
            f"| outliers ({self.outlier_method}) | {t['outliers']} |",
            "",
            *([f"**Warning:** {w}" for w in self.warnings] + [""] if self.warnings else []),
            *(["Normalisations:", *[f"- {n}" for n in self.notes], ""] if self.notes else []),
            "| series | rows in | rows out | duplicates | gaps filled | outliers | note |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for i, (sid, s) in enumerate(self.per_series.items()):
            if i == max_series:
                lines.append(f"| … {len(self.per_series) - max_series} more | | | | | | |")
                break
            note = self.dropped.get(sid) or self.outlier_skipped.get(sid, "")
            note = f"dropped: {note}" if sid in self.dropped else (f"no outlier check: {note}" if note else "")
            lines.append(
                f"| {_md(sid)} | {s['rows_in']} | {s['rows_out']} | {s['duplicates']} | {s['gaps_filled']} "
                f"| {s['outliers']} | {_md(note)} |"
            )
        return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


# --------------------------------------------------------------------------------------- frequency
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


def _grids(lo: np.ndarray, hi: np.ndarray, freq: str) -> tuple[np.ndarray, np.ndarray]:
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
    _, grid = _grids(idx[:1].to_numpy(), idx[-1:].to_numpy(), freq)
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


def _listing(items: Iterable[str], limit: int = _MAX_LISTED) -> str:
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" … and {len(items) - limit} more" if len(items) > limit else "")


def _frame_freq(df: pd.DataFrame) -> str:
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
            f"cannot infer a regular frequency for series {_listing(unknown)} (irregular timestamps); "
            "set it explicitly, e.g. `--set cleaning.freq=W-MON` (or D, MS, QS, h …)"
        )
    if not per_series:
        raise BadInputError(
            f"cannot infer the frequency: every series has fewer than 3 distinct timestamps ({_listing(too_few)}); "
            "supply longer series or set `--set cleaning.freq=<alias>`"
        )
    groups: dict[str, list[str]] = {}
    for sid, f in per_series.items():
        groups.setdefault(f, []).append(sid)  # type: ignore[arg-type]
    if len(groups) > 1:
        detail = "; ".join(f"{f}: {_listing(ids, 3)}" for f, ids in sorted(groups.items(), key=lambda kv: -len(kv[1])))
        raise BadInputError(
            f"series have different frequencies ({detail}); one run needs one frequency: split the file, "
            "or resample the series and set `--set cleaning.freq=<alias>`"
        )
    return next(iter(groups))


def infer_frequency(df: pd.DataFrame) -> str:
    """The one regular pandas frequency of a long frame (``pd.infer_freq`` per series, tolerant of gaps).

    Raises BadInputError naming the series whose frequency cannot be inferred or disagrees.
    """
    _check_frame(df)
    return _frame_freq(df)


# --------------------------------------------------------------------------------------- cleaning
def _check_frame(df: pd.DataFrame) -> None:
    missing = [c for c in (ID, TIME, TARGET) if c not in df.columns]
    if missing:
        raise BadInputError(
            f"the data to clean lacks columns {missing} (has {list(map(str, df.columns))}); "
            "load it with chronos_flows.ingest.load_dataset"
        )
    if len(df) == 0:
        raise BadInputError("the data to clean has no rows; supply a file with at least one series")


def _combine_duplicates(df: pd.DataFrame, rule: str) -> tuple[pd.DataFrame, pd.Series]:
    dup = df.duplicated([ID, TIME], keep="first")
    counts = dup.groupby(df[ID], sort=False).sum()
    if not dup.any():
        return df, counts
    g = df.groupby([ID, TIME], sort=True)[TARGET]
    if rule == "sum":
        y = g.sum(min_count=1)
    else:
        y = g.agg(rule)  # mean / first / last skip NaN: a missing duplicate never hides a value
    return y.reset_index(), counts


def _regularise(df: pd.DataFrame, freq: str, explicit: bool, with_present: bool = False):
    bounds = df.groupby(ID, sort=True)[TIME].agg(["min", "max"])
    owner, stamps = _grids(bounds["min"].to_numpy(), bounds["max"].to_numpy(), freq)
    full = pd.MultiIndex.from_arrays(
        [bounds.index.to_numpy(dtype=object)[owner], pd.DatetimeIndex(stamps)], names=[ID, TIME]
    )
    keyed = df.set_index([ID, TIME])
    off = ~keyed.index.isin(full)
    if off.any():
        bad = keyed.index[off]
        shown = "; ".join(f"{sid!r} at {ts}" for sid, ts in bad[:5])
        where = "set with cleaning.freq" if explicit else "inferred"
        raise BadInputError(
            f"timestamps off the {freq} grid ({where}): {shown}"
            + (f" (and {off.sum() - 5} more)" if off.sum() > 5 else "")
            + "; set `--set cleaning.freq=<alias>` to the data's real frequency/anchor, or align the timestamps"
        )
    out = keyed.reindex(full).reset_index()
    if with_present:
        return out, full.isin(keyed.index)
    return out


def _fill(df: pd.DataFrame, method: str) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """Drop leading/trailing missing values per series, fill interior gaps; count both per series."""
    present = df[TARGET].notna()
    by = df[ID]
    after_first = present.groupby(by, sort=False).cummax()
    before_last = present[::-1].groupby(by[::-1], sort=False).cummax()[::-1]
    keep = after_first & before_last
    trimmed = (~keep).groupby(by, sort=False).sum()
    gaps = (keep & ~present).groupby(by, sort=False).sum()
    out = df[keep].reset_index(drop=True)
    if gaps.any():
        # Every kept series starts and ends with a value, so frame-wide fills never cross series.
        if method == "interpolate":
            out[TARGET] = out[TARGET].interpolate(method="linear")
        elif method == "ffill":
            out[TARGET] = out[TARGET].ffill()
        else:
            out[TARGET] = out[TARGET].fillna(0.0)
    return out, gaps, trimmed


def stl_outliers(y: np.ndarray, period: int, k: float) -> tuple[np.ndarray, np.ndarray]:
    """Robust STL + IQR rule: ``(is_outlier, trend + seasonal)`` for one regular, gap-free series.

    Residuals above ``q75 + k·IQR`` or below ``q25 - k·IQR`` are outliers (the rule of the
    gasoline project this system was specified from). Needs ``len(y) >= 2 * period`` (statsmodels);
    :func:`clean` only calls it with ``MIN_STL_SEASONS`` seasons or more.
    """
    from statsmodels.tsa.seasonal import STL

    res = STL(np.asarray(y, dtype="float64"), period=period, robust=True).fit()
    resid = np.asarray(res.resid)
    q25, q75 = np.quantile(resid, 0.25), np.quantile(resid, 0.75)
    # A constant stretch has IQR 0: ignore floating-point noise instead of flagging it.
    iqr = max(q75 - q25, np.finfo("float64").eps * 1e3 * max(1.0, float(np.abs(y).max())))
    flags = (resid > q75 + k * iqr) | (resid < q25 - k * iqr)
    return flags, np.asarray(res.trend) + np.asarray(res.seasonal)


#: |y| at or above this is not a measurement: float32 (Chronos) overflows at 3.4e38 and scaling
#: squares values, so such a series is dropped as non-finite.
MAX_ABS_VALUE = 1e30
#: A spacing other than one step of the inferred frequency that covers this share of a frame's
#: steps makes the frequency ambiguous (e.g. weekly rows mixed into daily ones).
AMBIGUOUS_SHARE = 0.2
#: Filled points above this share of all cleaned points is a heavy repair (a warning).
HEAVY_FILL_SHARE = 0.05


def _spacing_check(present_pos: np.ndarray, owner: np.ndarray, freq: str) -> None:
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


def clean(df: pd.DataFrame, cfg: CleaningConfig, *, min_length: int, horizon: int,
          detect_outliers: bool = True) -> tuple[pd.DataFrame, CleaningReport]:
    """Clean the canonical long frame; return ``(unique_id, ds, y, is_outlier)`` and the report.

    A problem of one series (blank, non-finite or absurd values, too short, too many gaps) drops that
    series with the reason; only when no series is left is the data refused. ``detect_outliers=False``
    (a preflight that only validates) skips the STL fits, which can flag but never refuse data."""
    _check_frame(df)
    from chronos_flows.ingest import ingest_notes

    notes = ingest_notes(df)
    frame = pd.DataFrame(
        {ID: df[ID].astype(str), TIME: pd.to_datetime(df[TIME]).astype("datetime64[ns]"), TARGET: df[TARGET].astype("float64")}
    )
    ids, times = frame[ID].to_numpy(), frame[TIME].to_numpy()
    if len(frame) > 1 and not bool(np.all((ids[1:] > ids[:-1]) | ((ids[1:] == ids[:-1]) & (times[1:] >= times[:-1])))):
        notes.append("rows were not in (series, time) order: sorted")
    frame = frame.sort_values([ID, TIME], kind="mergesort", ignore_index=True)
    rows_in = frame.groupby(ID, sort=True).size()
    series_ids = [str(s) for s in rows_in.index]

    dropped: dict[str, str] = {}
    y_in = frame[TARGET].to_numpy()
    bad_value = ~np.isfinite(y_in) & ~np.isnan(y_in) | (np.abs(np.nan_to_num(y_in, nan=0.0, posinf=0.0, neginf=0.0)) >= MAX_ABS_VALUE)
    if bad_value.any():
        per = pd.Series(bad_value).groupby(frame[ID]).sum()
        for sid, n in per[per > 0].items():
            dropped[str(sid)] = f"{n} non-finite or absurd value(s) (infinite or |y| >= {MAX_ABS_VALUE:g}); fix the source"
        notes.append(f"{int(bad_value.sum())} non-finite or |y| >= {MAX_ABS_VALUE:g} value(s) in {len(per[per > 0])} series: those series dropped")
    blank = frame[TARGET].notna().groupby(frame[ID]).sum()
    for sid in blank[blank == 0].index:
        dropped.setdefault(str(sid), "blank: no values")
    if dropped:
        frame = frame[~frame[ID].isin(list(dropped))].reset_index(drop=True)
    if frame.empty:
        raise BadInputError(f"no usable series: {_listing([f'{k} ({v})' for k, v in dropped.items()])}; fix the data")

    freq = normalize_freq(cfg.freq) if cfg.freq else _frame_freq(frame)
    season = cfg.seasonal_period or season_length(freq)

    frame, dups = _combine_duplicates(frame, cfg.duplicates)
    if int(dups.sum()):
        notes.append(f"{int(dups.sum())} duplicate (series, timestamp) rows combined by {cfg.duplicates}")
    frame, present = _regularise(frame, freq, explicit=bool(cfg.freq), with_present=True)
    if not cfg.freq:
        codes = pd.factorize(frame[ID])[0]
        pos = np.flatnonzero(present)
        _spacing_check(pos, codes[pos], freq)
    frame, gaps, trimmed = _fill(frame, cfg.fill_method)

    lengths = frame.groupby(ID, sort=True).size()
    need = max(min_length, horizon + 1)
    for sid, n in lengths[lengths < need].items():
        dropped.setdefault(str(sid), f"{n} points after cleaning < minimum length {need}"
                           + (" (backtest windows + context)" if min_length >= horizon + 1 else f" (horizon {horizon} + 1)"))
    fill_share = (gaps.reindex(lengths.index, fill_value=0) / lengths.clip(lower=1)).astype(float)
    for sid, share in fill_share[fill_share > cfg.max_fill_fraction].items():
        dropped.setdefault(
            str(sid),
            f"{int(gaps.get(sid, 0))} of {int(lengths[sid])} points ({share:.0%}) would be filled > "
            f"cleaning.max_fill_fraction {cfg.max_fill_fraction:g}",
        )
    usable = [s for s in lengths.index if str(s) not in dropped]
    if not usable:
        detail = _listing([f"{sid}: {why}" for sid, why in dropped.items()])
        raise BadInputError(
            f"no usable series is left after cleaning: {detail}; lower evaluation.horizon / evaluation.n_windows, "
            f"supply longer or more complete series, or raise cleaning.max_fill_fraction"
        )
    if dropped:
        frame = frame[~frame[ID].isin(list(dropped))].reset_index(drop=True)

    outliers = np.zeros(len(frame), dtype=bool)
    skipped: dict[str, str] = {}
    if cfg.outliers != "off" and detect_outliers:  # a preflight validates without the STL fits
        y = frame[TARGET].to_numpy(copy=True)
        for sid, pos in frame.groupby(ID, sort=False).indices.items():
            if season < 2:
                skipped[str(sid)] = f"no seasonality at frequency {freq} (season length {season})"
            elif len(pos) < MIN_STL_SEASONS * season:
                skipped[str(sid)] = f"{len(pos)} points < {MIN_STL_SEASONS} seasons ({MIN_STL_SEASONS * season})"
            else:
                flags, fit = stl_outliers(y[pos], season, cfg.outlier_iqr_k)
                outliers[pos] = flags
                if cfg.outliers == "replace":
                    y[pos[flags]] = fit[flags]
        frame[TARGET] = y
    frame[OUTLIER] = outliers
    frame = frame[[ID, TIME, TARGET, OUTLIER]].sort_values([ID, TIME], kind="mergesort", ignore_index=True)

    n_out = frame.groupby(ID, sort=True)[OUTLIER].agg(["size", "sum"])
    per_series = {
        sid: {
            "rows_in": int(rows_in.get(sid, 0)),
            "rows_out": int(n_out["size"].get(sid, 0)),
            "duplicates": int(dups.get(sid, 0)),
            "gaps_filled": int(gaps.get(sid, 0)),
            "trimmed": int(trimmed.get(sid, 0)),
            "outliers": int(n_out["sum"].get(sid, 0)),
        }
        for sid in series_ids
    }
    method = (
        "off"
        if cfg.outliers == "off"
        else f"robust STL (period {season}) residuals beyond {cfg.outlier_iqr_k:g}×IQR from the quartiles: {cfg.outliers}"
    )
    warnings: list[str] = []
    kept_gaps = int(sum(int(gaps.get(s, 0)) for s in frame[ID].unique()))
    if len(frame) and kept_gaps / len(frame) > HEAVY_FILL_SHARE:
        warnings.append(f"heavy repair: {kept_gaps} of {len(frame)} points ({kept_gaps / len(frame):.0%}) were filled ({cfg.fill_method})")
    if dropped:
        warnings.append(f"{len(dropped)} of {len(series_ids)} series dropped: {_listing([f'{k} ({v})' for k, v in dropped.items()], 3)}")
    n_flagged = int(outliers.sum())
    if cfg.outliers == "replace" and len(frame) and n_flagged / len(frame) > HEAVY_FILL_SHARE:
        warnings.append(f"heavy repair: {n_flagged} of {len(frame)} points ({n_flagged / len(frame):.0%}) replaced as outliers")
    report = CleaningReport(
        notes=notes,
        warnings=warnings,
        freq=freq,
        season_length=int(season),
        rows_in=int(len(df)),
        rows_out=int(len(frame)),
        series_in=len(series_ids),
        series_out=int(frame[ID].nunique()),
        duplicates_resolved_rule=cfg.duplicates,
        fill_method=cfg.fill_method,
        per_series=per_series,
        dropped=dropped,
        outlier_method=method,
        outlier_skipped=skipped,
    )
    return frame, report
