"""load_dataset / fingerprint / parquet bytes: formats, layouts, sources and every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chronos_flows.config.params import DEFAULT_DATA, DataConfig
from chronos_flows.core.errors import BadInputError
from chronos_flows.data.ingest import (
    fingerprint,
    from_parquet_bytes,
    ingest_notes,
    load_dataset,
    to_parquet_bytes,
)

LONG = pd.DataFrame(
    {
        "unique_id": ["b"] * 4 + ["a"] * 4,
        "ds": list(pd.date_range("2024-01-01", periods=4, freq="W-MON").strftime("%Y-%m-%d")) * 2,
        "y": [5.0, 6.0, np.nan, 8.0, 1.0, 2.0, 3.0, 4.0],
    }
)


def _wide(long: pd.DataFrame) -> pd.DataFrame:
    return long.pivot(index="ds", columns="unique_id", values="y").reset_index().rename_axis(columns=None)


def _write(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix in (".parquet", ".pq"):
        df.to_parquet(path, index=False)
    else:
        df.to_excel(path, index=False)
    return path


def _error(source, cfg: DataConfig | None = None, fetch=None) -> str:
    with pytest.raises(BadInputError) as info:
        load_dataset(str(source), cfg or DataConfig(), fetch=fetch)
    return str(info.value)


# ----------------------------------------------------------------------------------- good input
def test_when_shipped_gasoline_loaded_then_canonical_1355_weekly_points():
    df = load_dataset(str(DEFAULT_DATA), DataConfig())
    assert list(df.columns) == ["unique_id", "ds", "y"]
    assert df["ds"].dtype == "datetime64[ns]" and df["y"].dtype == "float64"
    assert pd.api.types.is_string_dtype(df["unique_id"])
    assert len(df) == 1355 and set(df["unique_id"]) == {"us_gasoline"}
    assert df["ds"].iloc[0] == pd.Timestamp("1991-02-04") and df["ds"].iloc[-1] == pd.Timestamp("2017-01-16")
    assert pd.infer_freq(pd.DatetimeIndex(df["ds"])) == "W-MON"
    assert not df["y"].isna().any() and df["y"].between(6.0, 10.0).all()


def test_when_shipped_livestock_panel_loaded_then_42_monthly_series_of_120():
    df = load_dataset(str(DEFAULT_DATA.with_name("aus_livestock.csv")), DataConfig())
    sizes = df.groupby("unique_id").size()
    assert len(sizes) == 42 and (sizes == 120).all()
    assert df["ds"].min() == pd.Timestamp("2009-01-01") and df["ds"].max() == pd.Timestamp("2018-12-01")


@pytest.mark.parametrize("name", ["d.csv", "d.parquet", "d.pq", "d.xlsx"])
@pytest.mark.parametrize("layout", ["long", "wide"])
@pytest.mark.parametrize("dates", ["text", "datetime"])
def test_when_same_data_in_any_format_and_layout_then_same_canonical_frame(tmp_path, name, layout, dates):
    source = LONG if dates == "text" else LONG.assign(ds=pd.to_datetime(LONG["ds"]))
    path = _write(source if layout == "long" else _wide(source), tmp_path / name)
    df = load_dataset(str(path), DataConfig(layout=layout))
    expected = pd.DataFrame(
        {
            "unique_id": ["a"] * 4 + ["b"] * 4,
            "ds": pd.to_datetime(list(LONG["ds"][:4]) * 2).astype("datetime64[ns]"),
            "y": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, np.nan, 8.0],
        }
    )
    pd.testing.assert_frame_equal(df.astype({"unique_id": object}), expected.astype({"unique_id": object}))
    assert fingerprint(df) == fingerprint(expected)


def test_when_file_url_given_then_same_frame_as_path(tmp_path):
    path = _write(LONG, tmp_path / "data set.csv")
    by_url = load_dataset(path.as_uri(), DataConfig())
    pd.testing.assert_frame_equal(by_url, load_dataset(str(path), DataConfig()))


def test_when_s3_uri_given_then_bytes_come_from_fetch():
    objects = {"s3://bucket/in/sales.parquet": to_parquet_bytes(LONG)}
    calls: list[str] = []

    def fetch(uri: str) -> bytes | None:
        calls.append(uri)
        return objects.get(uri)

    df = load_dataset("s3://bucket/in/sales.parquet", DataConfig(), fetch=fetch)
    assert calls == ["s3://bucket/in/sales.parquet"]
    assert len(df) == 8 and sorted(df["unique_id"].unique()) == ["a", "b"]
    message = _error("s3://bucket/in/missing.csv", fetch=fetch)
    assert "s3://bucket/in/missing.csv" in message and "does not exist" in message


def test_when_s3_uri_without_fetch_then_bad_input_names_uri():
    assert "s3://bucket/x.csv" in _error("s3://bucket/x.csv")


def test_when_default_id_column_absent_then_one_series_named_after_file(tmp_path):
    path = _write(LONG[["ds", "y"]].iloc[:4], tmp_path / "store_42.csv")
    df = load_dataset(str(path), DataConfig())
    assert set(df["unique_id"]) == {"store_42"} and len(df) == 4


def test_when_ids_look_numeric_then_they_stay_text(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("unique_id,ds,y\n007,2024-01-01,1\n007,2024-01-02,2\n010,2024-01-01,3\n")
    assert sorted(load_dataset(str(path), DataConfig())["unique_id"].unique()) == ["007", "010"]


def test_when_custom_columns_named_then_they_are_used(tmp_path):
    path = tmp_path / "custom.csv"
    path.write_text("store,when,sales\nx,2024-01-01,1.5\nx,2024-01-02,2.5\n")
    cfg = DataConfig(id_column="store", timestamp_column="when", target_column="sales")
    df = load_dataset(str(path), cfg)
    assert df["y"].tolist() == [1.5, 2.5] and set(df["unique_id"]) == {"x"}


def test_when_timestamps_are_tz_aware_then_wall_clock_kept_tz_naive(tmp_path):
    path = tmp_path / "tz.csv"
    path.write_text("ds,y\n2024-01-01T00:00:00+02:00,1\n2024-01-01T01:00:00+02:00,2\n")
    df = load_dataset(str(path), DataConfig())
    assert df["ds"].dtype == "datetime64[ns]" and df["ds"].iloc[0] == pd.Timestamp("2024-01-01 00:00")
    assert any("timezone" in n and "wall-clock" in n for n in ingest_notes(df))


def test_when_row_order_changes_then_fingerprint_is_stable_and_content_changes_it():
    base = load_dataset(str(DEFAULT_DATA), DataConfig())
    shuffled = base.sample(frac=1.0, random_state=3)
    assert fingerprint(shuffled) == fingerprint(base)
    changed = base.copy()
    changed.loc[100, "y"] += 0.001
    assert fingerprint(changed) != fingerprint(base)
    renamed = base.assign(unique_id="other")
    assert fingerprint(renamed) != fingerprint(base)
    assert len(fingerprint(base)) == 64


def test_when_frame_round_trips_through_parquet_bytes_then_identical():
    base = load_dataset(str(DEFAULT_DATA), DataConfig())
    back = from_parquet_bytes(to_parquet_bytes(base))
    pd.testing.assert_frame_equal(back, base)
    assert fingerprint(back) == fingerprint(base)
    flagged = base.assign(is_outlier=False)
    assert from_parquet_bytes(to_parquet_bytes(flagged))["is_outlier"].dtype == bool


# ------------------------------------------------------------------------------------ bad input
def test_when_file_missing_then_error_names_file_and_setting(tmp_path):
    message = _error(tmp_path / "nope.csv")
    assert "nope.csv" in message and "does not exist" in message and "data.path" in message
    (tmp_path / "folder.csv").mkdir()
    assert "folder.csv is a directory" in _error(tmp_path / "folder.csv")


@pytest.mark.parametrize("content", ["", "\n\n", "unique_id,ds,y\n"])
def test_when_file_empty_then_error_names_file(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    message = _error(path)
    assert "empty.csv" in message and ("empty" in message or "no data rows" in message)


def test_when_parquet_has_no_rows_then_error_names_file(tmp_path):
    path = _write(LONG.iloc[:0], tmp_path / "none.parquet")
    message = _error(path)
    assert "none.parquet" in message and "no data rows" in message and "'ds'" in message


@pytest.mark.parametrize(
    ("columns", "cfg", "missing", "field"),
    [
        (["unique_id", "date", "y"], DataConfig(), "'ds'", "data.timestamp_column"),
        (["unique_id", "ds", "value"], DataConfig(), "'y'", "data.target_column"),
        (["unique_id", "ds", "y"], DataConfig(id_column="store"), "'store'", "data.id_column"),
        (["Date", "a", "b"], DataConfig(layout="wide"), "'ds'", "data.timestamp_column"),
    ],
)
def test_when_column_missing_then_error_lists_columns_found_and_set_fix(tmp_path, columns, cfg, missing, field):
    path = tmp_path / "sales.csv"
    pd.DataFrame([["x", "2024-01-01", 1]], columns=columns).to_csv(path, index=False)
    message = _error(path, cfg)
    assert "sales.csv" in message and missing in message and f"--set {field}=" in message
    assert all(repr(c) in message for c in columns)


def test_when_target_not_numeric_then_error_shows_first_bad_values_with_lines(tmp_path):
    path = tmp_path / "bad_y.csv"
    path.write_text("unique_id,ds,y\na,2024-01-01,1\na,2024-01-02,oops\na,2024-01-03,\na,2024-01-04,n/a!\n")
    message = _error(path)
    assert "bad_y.csv" in message and "'y'" in message
    assert "line 3: 'oops'" in message and "line 5: 'n/a!'" in message


def test_when_wide_series_not_numeric_then_error_names_series_column(tmp_path):
    path = tmp_path / "wide.xlsx"
    _write(pd.DataFrame({"ds": ["2024-01-01", "2024-01-02"], "north": [1, 2], "south": [3, "x"]}), path)
    message = _error(path, DataConfig(layout="wide"))
    assert "wide.xlsx" in message and "'south'" in message and "row 3: 'x'" in message


def test_when_timestamps_unparseable_then_error_shows_first_bad_values(tmp_path):
    path = tmp_path / "bad_ds.csv"
    path.write_text("unique_id,ds,y\na,2024-01-01,1\na,tomorrow,2\na,2024-13-45,3\n")
    message = _error(path)
    assert "bad_ds.csv" in message and "'ds'" in message
    assert "line 3: 'tomorrow'" in message and "line 4: '2024-13-45'" in message


def test_when_timestamp_missing_in_a_row_then_error_names_row(tmp_path):
    path = tmp_path / "gap_ds.csv"
    path.write_text("unique_id,ds,y\na,2024-01-01,1\na,,2\n")
    message = _error(path)
    assert "gap_ds.csv" in message and "'ds'" in message and "line 3" in message


def test_when_extension_unknown_then_error_names_file_and_format_setting(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("ds,y\n2024-01-01,1\n")
    message = _error(path)
    assert "data.txt" in message and "'.txt'" in message and "data.format" in message
    assert len(load_dataset(str(path), DataConfig(format="csv"))) == 1


@pytest.mark.parametrize("name", ["broken.parquet", "broken.xlsx"])
def test_when_file_corrupt_then_error_names_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04 definitely not a real file" * 10)
    message = _error(path)
    assert name in message and "cannot be read" in message


def test_when_excel_sheet_missing_then_error_lists_sheets(tmp_path):
    path = _write(LONG, tmp_path / "book.xlsx")
    message = _error(path, DataConfig(sheet="Data"))
    assert "book.xlsx" in message and "'Data'" in message and "Sheet1" in message and "data.sheet" in message


def test_when_target_infinite_then_ingest_keeps_it_for_cleaning_to_drop_that_series(tmp_path):
    path = tmp_path / "inf.csv"
    path.write_text("unique_id,ds,y\nb,2024-01-02,inf\na,2024-01-01,1\n")
    df = load_dataset(str(path), DataConfig())
    assert np.isinf(df["y"]).sum() == 1
    assert "rows were not in (series, time) order: sorted" in ingest_notes(df)
