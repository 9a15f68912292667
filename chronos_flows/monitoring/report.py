"""What an engineer sees: the table of scored forecasts (live vs promised) and a PNG of live WQL per
forecast origin against the champion's backtest WQL band (from its backtest WQL to the rule's
threshold). Pure: matplotlib without pyplot (Agg canvas)."""

from __future__ import annotations

import io
import math
from typing import Any

import pandas as pd

from chronos_flows.monitoring.history import latest_per_forecast
from chronos_flows.monitoring.rule import DegradationRule


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def accuracy_rows(history: pd.DataFrame) -> list[dict[str, Any]]:
    """The newest scoring of each forecast as printable rows, oldest origin first."""
    rows = []
    for _, r in latest_per_forecast(history).iterrows():
        ratio = r["wql"] / r["promised_wql"] if r["promised_wql"] and math.isfinite(r["promised_wql"]) else float("nan")
        rows.append({
            "forecast_id": r["forecast_id"], "source": r["source"], "champion": f"{r['family']}@{r['champion_run_id']}",
            "origin": f"{pd.Timestamp(r['origin']):%Y-%m-%d}", "scored_through": f"{pd.Timestamp(r['scored_through']):%Y-%m-%d}",
            "steps": f"{int(r['steps_scored'])}/{int(r['horizon'])}", "points": int(r["n_points"]),
            "wql": float(r["wql"]), "promised_wql": float(r["promised_wql"]), "wql_vs_promised": float(ratio),
            "mase": float(r["mase"]), "coverage_80": float(r["coverage_80"]), "bias": float(r["bias"]),
            "revised": bool(r.get("revision_of")),
        })
    return rows


def table_text(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned shell table."""
    if not rows:
        return "no scored forecasts yet"
    cols = ["forecast_id", "champion", "origin", "steps", "wql", "promised_wql", "wql_vs_promised", "mase", "coverage_80", "bias"]
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]], *, summary: dict[str, Any], rule: DegradationRule) -> str:
    """The monitor run's markdown: what was scored, live vs promised, the rule's verdict, the issues."""
    deg = summary.get("degradation")
    verdict = (f"**DEGRADED** — {deg.get('reason')}" if deg else "not degraded")
    lines = [
        f"## Live accuracy of published forecasts ({summary['env']})",
        "",
        f"- data: `{summary['data']}`; published forecasts: {summary['published']}, scored: {summary['scored']}, "
        f"history rows written: {summary['rows_written']} (already recorded: {summary['rows_already_recorded']})",
        f"- champion {summary.get('champion_run_id') or '-'}: {verdict}",
        f"- rule: {rule.describe()}",
        "",
        "| forecast | champion | origin | steps | live WQL | backtest WQL | live / backtest | MASE | coverage 80% | bias |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['forecast_id']} | {r['champion']} | {r['origin']} | {r['steps']} | {_fmt(r['wql'])} | "
                     f"{_fmt(r['promised_wql'])} | {_fmt(r['wql_vs_promised'], 3)} | {_fmt(r['mase'])} | "
                     f"{_fmt(r['coverage_80'], 3)} | {_fmt(r['bias'], 3)} |")
    if summary.get("issues"):
        lines += ["", "### Reported (not merged silently)", ""] + [f"- {i}" for i in summary["issues"][:50]]
    return "\n".join(lines)


def wql_png(history: pd.DataFrame, rule: DegradationRule, champion_run_id: str | None = None) -> bytes:
    """PNG: live WQL per forecast origin (one line per champion) and the serving champion's band from
    its backtest WQL to the degradation threshold."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = latest_per_forecast(history)
    fig = Figure(figsize=(9, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for run_id, g in rows.groupby("champion_run_id", sort=False):
        g = g.sort_values("origin")
        ax.plot(pd.to_datetime(g["origin"]), g["wql"], marker="o", lw=1.4, label=f"live WQL, {g['family'].iloc[-1]} @ {run_id}")
    if champion_run_id is not None and len(rows):
        mine = rows[rows["champion_run_id"] == champion_run_id]
        if len(mine) and math.isfinite(float(mine["promised_wql"].iloc[-1])):
            promised = float(mine["promised_wql"].iloc[-1])
            ax.axhspan(promised, promised * (1 + rule.tolerance), color="#2ca02c", alpha=0.15,
                       label=f"backtest WQL {promised:.3g} … threshold ×{1 + rule.tolerance:g}")
            ax.axhline(promised, color="#2ca02c", lw=1.0)
    ax.set_xlabel("forecast origin")
    ax.set_ylabel("WQL (lower is better)")
    ax.set_title("Live WQL of published forecasts vs the champion's backtest")
    ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
