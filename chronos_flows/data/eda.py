"""Know the data: an exploratory report of a cleaned panel (per series, for the panel, with plots).

Per series (:func:`series_features`): length, start and end, missing share (points the cleaning
filled), zero share, intermittency — ADI, the average demand interval (points per non-zero value),
and CV², the squared coefficient of variation of the non-zero values (population SD), classified
smooth / erratic / intermittent / lumpy at ADI 1.32 and CV² 0.49 (Syntetos & Boylan) — trend and
seasonal strength on an STL decomposition (Hyndman's ``tsfeatures`` definitions:
``F_T = max(0, 1 - Var(R) / Var(T + R))``, ``F_S = max(0, 1 - Var(R) / Var(S + R))``; statsmodels
STL, seasonal window 13, not robust, as ``forecast::mstl``), the strongest break (``tsfeatures``'
``max_level_shift``: the largest change of the mean between consecutive windows of one season, here
divided by the series' SD), the outliers the cleaning flagged.

For the panel (:func:`panel_report`): frequency and season length, the distribution of each feature,
the unusual series (shortest, most intermittent, strongest break, most outliers), which model
families suit the panel and which series the cleaning dropped and why, and (:func:`eda_plots`) PNGs
of the feature distributions and of a few unusual series with their decomposition and flags.

The ``tsfeatures`` package itself was not used: it pulls numba, arch, scikit-learn and antropy in
for a few lines of variance ratios. Pure pandas / statsmodels / matplotlib (Agg, no pyplot); no I/O.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

from chronos_flows.config.params import CleaningConfig
from chronos_flows.data.cleaning import (
    ID, INTERMITTENT_ZERO_SHARE, OUTLIER, TARGET, TIME, CleaningReport, detect_outliers, outlier_skip_reason,
)

#: Syntetos-Boylan cut-offs of the demand classes.
ADI_CUTOFF, CV2_CUTOFF = 1.32, 0.49
#: STL's seasonal smoother for the strength features (``forecast::mstl``'s first window).
FEATURE_SEASONAL_WINDOW = 13
#: A series shorter than this many seasons is "short": seasonal models see too few seasons.
SHORT_SEASONS = 2
FEATURES = ("length", "missing_share", "zero_share", "adi", "cv2", "trend_strength", "seasonal_strength",
            "max_level_shift", "outlier_share")


# ------------------------------------------------------------------------------------ features
def intermittency(y: np.ndarray) -> tuple[float, float, str]:
    """``(ADI, CV², class)`` of one series: ADI = points / non-zero points (inf when all zero), CV² of
    the non-zero values (population SD; 0 with fewer than two), class by :data:`ADI_CUTOFF`/:data:`CV2_CUTOFF`."""
    y = np.asarray(y, dtype="float64")
    nz = y[y != 0]
    adi = float(len(y) / len(nz)) if len(nz) else float("inf")
    cv2 = float((nz.std() / nz.mean()) ** 2) if len(nz) > 1 and nz.mean() != 0 else 0.0
    if adi < ADI_CUTOFF:
        kind = "smooth" if cv2 < CV2_CUTOFF else "erratic"
    else:
        kind = "intermittent" if cv2 < CV2_CUTOFF else "lumpy"
    return adi, cv2, kind


def stl_strength(y: np.ndarray, period: int) -> tuple[float | None, float | None]:
    """``(trend strength, seasonal strength)``, Hyndman's definitions on a non-robust STL; ``None``
    when the series has no seasonality (period < 2) or fewer than two seasons."""
    y = np.asarray(y, dtype="float64")
    if period < 2 or len(y) < 2 * period + 1:
        return None, None
    from statsmodels.tsa.seasonal import STL

    res = STL(y, period=period, seasonal=FEATURE_SEASONAL_WINDOW).fit()
    r, t, s = np.asarray(res.resid), np.asarray(res.trend), np.asarray(res.seasonal)
    return _strength(r, t), _strength(r, s)


def _strength(resid: np.ndarray, component: np.ndarray) -> float:
    total = np.var(component + resid, ddof=1)
    return float(max(0.0, 1.0 - np.var(resid, ddof=1) / total)) if total > 0 else 0.0


def max_level_shift(y: np.ndarray, width: int) -> tuple[float, int | None]:
    """``(shift / SD of the series, index where the later window starts)``: the largest absolute
    difference of the means of two consecutive, non-overlapping windows of ``width`` points."""
    y = np.asarray(y, dtype="float64")
    if len(y) < 2 * width or width < 1:
        return 0.0, None
    means = pd.Series(y).rolling(width).mean().to_numpy()  # means[i]: window ending at i
    diff = np.abs(means[2 * width - 1:] - means[width - 1:-width])
    i = int(np.nanargmax(diff))
    sd = float(np.std(y, ddof=1))
    return (float(diff[i] / sd) if sd > 0 else 0.0), i + width


def series_features(sid: str, ds: pd.Series, y: np.ndarray, period: int, *, gaps_filled: int = 0,
                    outliers: int = 0) -> dict[str, Any]:
    """One cleaned series' row of the report."""
    y = np.asarray(y, dtype="float64")
    adi, cv2, kind = intermittency(y)
    trend, seasonal = stl_strength(y, period)
    shift, at = max_level_shift(y, max(period, 3))
    n = len(y)
    return {
        "unique_id": str(sid),
        "length": n,
        "start": pd.Timestamp(ds.iloc[0]).isoformat() if n else None,
        "end": pd.Timestamp(ds.iloc[-1]).isoformat() if n else None,
        "missing_share": round(gaps_filled / n, 4) if n else 0.0,
        "zero_share": round(float(np.mean(y == 0)), 4) if n else 0.0,
        "adi": round(adi, 4) if np.isfinite(adi) else None,
        "cv2": round(cv2, 4),
        "demand_class": kind,
        "trend_strength": None if trend is None else round(trend, 4),
        "seasonal_strength": None if seasonal is None else round(seasonal, 4),
        "max_level_shift": round(shift, 4),
        "max_level_shift_at": pd.Timestamp(ds.iloc[at]).isoformat() if at is not None else None,
        "outliers": int(outliers),
        "outlier_share": round(outliers / n, 4) if n else 0.0,
    }


# --------------------------------------------------------------------------------------- panel
def _distribution(values: pd.Series) -> dict[str, float] | None:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return None
    q = v.quantile([0.0, 0.25, 0.5, 0.75, 1.0]).to_numpy()
    return {"min": round(float(q[0]), 4), "p25": round(float(q[1]), 4), "median": round(float(q[2]), 4),
            "p75": round(float(q[3]), 4), "max": round(float(q[4]), 4), "mean": round(float(v.mean()), 4)}


def _top(table: pd.DataFrame, col: str, ascending: bool, k: int = 3) -> list[dict[str, Any]]:
    t = table.dropna(subset=[col]).sort_values([col, "unique_id"], ascending=[ascending, True]).head(k)
    return [{"unique_id": r["unique_id"], col: r[col]} for _, r in t.iterrows()]


def family_notes(table: pd.DataFrame, period: int, report: CleaningReport) -> list[str]:
    """Which model families suit the panel, from its features (and the series the cleaning dropped)."""
    notes: list[str] = []
    n = len(table)
    inter = table[table["demand_class"].isin(["intermittent", "lumpy"])]
    if len(inter):
        notes.append(
            f"{len(inter)} of {n} series are intermittent or lumpy (ADI >= {ADI_CUTOFF}): Seasonal Naive and AutoETS "
            "are weak there (they repeat or smooth the spikes and zeros); judge models on them by WQL, not MASE alone, "
            "and expect Chronos to do better; the default outlier rule does not check series with more than "
            f"{INTERMITTENT_ZERO_SHARE:.0%} zeros.")
    if period >= 2:
        short = table[table["length"] < SHORT_SEASONS * period]
        if len(short):
            notes.append(
                f"{len(short)} of {n} series have fewer than {SHORT_SEASONS} seasons ({SHORT_SEASONS * period} points): "
                "AutoETS drops the season when a series is not longer than one season, AutoTheta tests seasonality only "
                f"from {2 * period} points, and trend/seasonal strength are not computed for them.")
        strong = table["seasonal_strength"].dropna()
        if len(strong) and float(strong.median()) >= 0.6:
            notes.append(f"seasonality is strong (median seasonal strength {strong.median():.2f}): Seasonal Naive is a "
                         "fair benchmark and seasonal ETS/Theta suit the panel.")
        elif len(strong):
            notes.append(f"seasonality is weak (median seasonal strength {strong.median():.2f}): Seasonal Naive is a weak "
                         "benchmark here; trend models (ETS, Theta) and Chronos matter more.")
    else:
        notes.append("no seasonality at this frequency: Seasonal Naive is a naive forecast; STL features are not computed.")
    breaks = table[table["max_level_shift"] >= 2.0]
    if len(breaks):
        notes.append(f"{len(breaks)} of {n} series shift level by 2 SDs or more between consecutive seasons: local models fit "
                     "on the whole history may lag; look at the plots of the strongest breaks.")
    if report.dropped:
        notes.append(f"{len(report.dropped)} series were dropped by the cleaning and are not modelled: "
                     + "; ".join(f"{k} ({v})" for k, v in list(report.dropped.items())[:5])
                     + (" …" if len(report.dropped) > 5 else ""))
    return notes


def panel_report(cleaned: pd.DataFrame, report: CleaningReport) -> dict[str, Any]:
    """The exploratory report of a cleaned panel (JSON-able): ``series`` (one row each), ``panel``
    (distributions, demand classes), ``unusual``, ``families`` (notes), ``cleaning`` (what it did)."""
    period = report.season_length
    rows = []
    for sid, g in cleaned.groupby(ID, sort=True):
        per = report.per_series.get(str(sid), {})
        rows.append(series_features(str(sid), g[TIME].reset_index(drop=True), g[TARGET].to_numpy(), period,
                                    gaps_filled=int(per.get("gaps_filled", 0)), outliers=int(g[OUTLIER].sum())))
    table = pd.DataFrame(rows)
    return {
        "freq": report.freq,
        "season_length": period,
        "series": len(rows),
        "rows": int(len(cleaned)),
        "outlier_method": report.outlier_method,
        "panel": {
            "distributions": {f: _distribution(table[f]) for f in FEATURES if f in table},
            "demand_classes": {k: int(v) for k, v in table["demand_class"].value_counts().sort_index().items()},
            "outlier_share_of_points": round(float(cleaned[OUTLIER].mean()), 5) if len(cleaned) else 0.0,
        },
        "unusual": {
            "shortest": _top(table, "length", True),
            "most_intermittent": _top(table, "adi", False),
            "strongest_break": _top(table, "max_level_shift", False),
            "most_outliers": [r for r in _top(table, "outliers", False) if r["outliers"] > 0],
        },
        "families": family_notes(table, period, report),
        "cleaning": {"dropped": dict(report.dropped), "outlier_skipped": dict(report.outlier_skipped),
                     "warnings": list(report.warnings)},
        "per_series": rows,
    }


def plotted_series(eda: dict[str, Any], k: int = 3) -> list[str]:
    """The series the plots show: the strongest break, the most outliers, the most intermittent (distinct)."""
    out: list[str] = []
    for key in ("most_outliers", "strongest_break", "most_intermittent", "shortest"):
        for row in eda["unusual"].get(key, []):
            if row["unique_id"] not in out:
                out.append(row["unique_id"])
                break
        if len(out) == k:
            break
    return out


# ---------------------------------------------------------------------------------------- text
def _fmt(d: dict[str, float] | None) -> str:
    if not d:
        return "–"
    return " / ".join(f"{d[k]:.4g}" for k in ("min", "p25", "median", "p75", "max"))


def to_markdown(eda: dict[str, Any], images: dict[str, str] | None = None) -> str:
    """The report as markdown; ``images`` maps a title to an image target (a data URI) shown at the end."""
    lines = [
        "### Exploratory report",
        "",
        f"{eda['series']} series, {eda['rows']} points, frequency `{eda['freq']}` (season length {eda['season_length']}); "
        f"{eda['panel']['outlier_share_of_points']:.2%} of points flagged as outliers ({eda['outlier_method']}).",
        "",
        "| feature | min / p25 / median / p75 / max |",
        "|---|---|",
        *[f"| {f} | {_fmt(d)} |" for f, d in eda["panel"]["distributions"].items()],
        "",
        "Demand classes: " + ", ".join(f"{k} {v}" for k, v in eda["panel"]["demand_classes"].items()),
        "",
        "**Unusual series**",
        "",
    ]
    for key, rows in eda["unusual"].items():
        if rows:
            col = next(c for c in rows[0] if c != "unique_id")
            lines.append(f"- {key.replace('_', ' ')}: " + ", ".join(f"`{r['unique_id']}` ({r[col]})" for r in rows))
    lines += ["", "**Which families suit the panel**", "", *[f"- {n}" for n in eda["families"]], ""]
    for title, target in (images or {}).items():
        lines += [f"#### {title}", "", f"![{title}]({target})", ""]
    return "\n".join(lines)


def summary_text(eda: dict[str, Any]) -> str:
    """A plain-text summary for the terminal (``chronos-flows eda``)."""
    md = to_markdown(eda)
    return md.replace("### ", "").replace("**", "").replace("`", "")


# --------------------------------------------------------------------------------------- plots
def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def distribution_png(eda: dict[str, Any]) -> bytes:
    """Histograms of length, trend and seasonal strength, and ADI against CV² (log ADI)."""
    from matplotlib.figure import Figure

    table = pd.DataFrame(eda["per_series"])
    fig = Figure(figsize=(9, 5), dpi=80)
    axes = fig.subplots(2, 2)
    for ax, col in zip(axes.flat[:3], ("length", "trend_strength", "seasonal_strength")):
        v = pd.to_numeric(table[col], errors="coerce").dropna()
        ax.hist(v, bins=20, color="tab:blue")
        ax.set_title(col.replace("_", " "), fontsize=9)
    ax = axes.flat[3]
    adi = pd.to_numeric(table["adi"], errors="coerce")
    ax.scatter(adi, table["cv2"], s=10)
    ax.axvline(ADI_CUTOFF, color="grey", lw=0.8)
    ax.axhline(CV2_CUTOFF, color="grey", lw=0.8)
    ax.set_xlabel("ADI", fontsize=8)
    ax.set_ylabel("CV²", fontsize=8)
    ax.set_title("intermittency", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def series_png(cleaned: pd.DataFrame, sid: str, period: int, cfg: CleaningConfig | None = None) -> bytes:
    """One series: the data with its flagged outliers, then the STL trend, seasonal and residual of the
    outlier rule (when it checks the series)."""
    from matplotlib.figure import Figure

    cfg = cfg or CleaningConfig()
    g = cleaned[cleaned[ID] == sid]
    y, ds, flags = g[TARGET].to_numpy(), g[TIME].to_numpy(), g[OUTLIER].to_numpy()
    fit = None if outlier_skip_reason(y, period, "", cfg) else detect_outliers(y, period, cfg)
    fig = Figure(figsize=(9, 6 if fit is not None else 2.6), dpi=80)
    axes = np.atleast_1d(fig.subplots(4 if fit is not None else 1, 1, sharex=True))
    axes[0].plot(ds, y, lw=0.9, label="data")
    if flags.any():
        axes[0].scatter(ds[flags], y[flags], color="red", s=18, zorder=3, label="outlier")
    axes[0].set_title(sid, fontsize=9)
    axes[0].legend(fontsize=7, loc="upper left")
    if fit is not None:
        scale = " (log scale)" if fit.log_scale else ""
        for ax, part, name in zip(axes[1:], (fit.trend, fit.seasonal, fit.resid), ("trend", "seasonal", "residual")):
            ax.plot(ds, part, lw=0.8)
            ax.set_ylabel(name + scale, fontsize=7)
        axes[3].scatter(ds[flags], fit.resid[flags], color="red", s=12)
    fig.tight_layout()
    return _png(fig)


def eda_plots(cleaned: pd.DataFrame, eda: dict[str, Any], cfg: CleaningConfig | None = None) -> dict[str, bytes]:
    """``{title: PNG}``: the feature distributions and a few unusual series."""
    out = {"Feature distributions": distribution_png(eda)}
    for sid in plotted_series(eda):
        out[f"Series {sid}"] = series_png(cleaned, sid, eda["season_length"], cfg)
    return out
