"""The exploratory report: features against plain references, the panel report, the task and
``chronos-flows eda`` (CSV, Parquet, S3 on a local moto server, bad input)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.tsa.seasonal import STL

from app.cli import main
from blocks.resolve import open_store
from chronos_flows.config.params import DEFAULT_DATA, CleaningConfig, DataConfig, build_params
from chronos_flows.core import layout
from chronos_flows.data import eda
from chronos_flows.data.cleaning import clean
from chronos_flows.data.ingest import load_dataset

LIVESTOCK = DEFAULT_DATA.with_name("aus_livestock.csv")


# ---------------------------------------------------------------------------------- features
@pytest.mark.parametrize(("y", "adi", "cv2", "kind"), [
    ([0, 0, 3, 0, 0, 3, 0, 0, 3], 3.0, 0.0, "intermittent"),     # demand every 3rd point, constant size
    ([1, 2, 3, 4], 1.0, 1.25 / 6.25, "smooth"),                   # population variance / mean²
    ([0, 10, 0, 1, 0, 10, 0, 1], 2.0, (4.5 / 5.5) ** 2, "lumpy"),
    ([9, 1, 9, 1, 9, 1], 1.0, (4 / 5) ** 2, "erratic"),
])
def test_when_intermittency_is_computed_on_hand_built_series_then_it_matches_a_plain_reference(y, adi, cv2, kind):
    y = np.asarray(y, dtype=float)
    nz = y[y != 0]
    ref_adi = len(y) / len(nz)
    ref_cv2 = (np.sqrt(np.mean((nz - nz.mean()) ** 2)) / nz.mean()) ** 2  # population SD, by hand
    got_adi, got_cv2, got_kind = eda.intermittency(y)
    assert got_adi == pytest.approx(ref_adi) == pytest.approx(adi)
    assert got_cv2 == pytest.approx(ref_cv2)
    assert got_cv2 == pytest.approx(cv2)
    assert got_kind == kind


def test_when_a_series_is_all_zeros_then_adi_is_infinite_and_it_is_intermittent():
    assert eda.intermittency(np.zeros(10)) == (float("inf"), 0.0, "intermittent")


def test_when_strengths_are_computed_then_they_match_hyndmans_formula_on_the_stl_components():
    rng = np.random.default_rng(0)
    t = np.arange(96)
    y = 0.3 * t + 5 * np.sin(2 * np.pi * t / 12) + rng.normal(size=96)
    res = STL(y, period=12, seasonal=13).fit()
    r, tr, s = res.resid, res.trend, res.seasonal
    ref_t = max(0.0, 1 - np.var(r, ddof=1) / np.var(tr + r, ddof=1))
    ref_s = max(0.0, 1 - np.var(r, ddof=1) / np.var(s + r, ddof=1))
    got_t, got_s = eda.stl_strength(y, 12)
    assert got_t == pytest.approx(ref_t) and got_s == pytest.approx(ref_s)
    assert got_t > 0.8 and got_s > 0.8  # a strong trend and a strong season


def test_when_a_series_is_white_noise_then_both_strengths_are_low_and_too_short_gives_none():
    y = np.random.default_rng(1).normal(size=120)
    trend, seasonal = eda.stl_strength(y, 12)
    assert trend < 0.4 and seasonal < 0.4
    assert eda.stl_strength(y[:20], 12) == (None, None)
    assert eda.stl_strength(y, 1) == (None, None)


def test_when_a_series_steps_up_then_the_strongest_break_is_found_at_the_step():
    y = np.r_[np.zeros(30), np.full(30, 10.0)] + np.random.default_rng(2).normal(scale=0.1, size=60)
    shift, at = eda.max_level_shift(y, 4)
    assert at == 30
    assert shift == pytest.approx(10.0 / np.std(y, ddof=1), rel=0.05)


# ------------------------------------------------------------------------------------- panel
def _panel() -> tuple[pd.DataFrame, object]:
    """Three monthly series: seasonal, intermittent, short (and one too short: dropped)."""
    rng = np.random.default_rng(3)
    t = np.arange(96)
    seasonal = 100 + 20 * np.sin(2 * np.pi * t / 12) + rng.normal(size=96)
    intermittent = np.where(rng.random(96) < 0.3, rng.integers(1, 5, 96), 0).astype(float)
    parts = [("seasonal", seasonal), ("intermittent", intermittent), ("short", 50 + rng.normal(size=18)),
             ("tiny", np.ones(3))]
    df = pd.concat([pd.DataFrame({"unique_id": k, "ds": pd.date_range("2010-01-01", periods=len(v), freq="MS"), "y": v})
                    for k, v in parts], ignore_index=True)
    return clean(df, CleaningConfig(), min_length=12, horizon=6)


def test_when_a_panel_is_explored_then_every_series_is_described_and_the_notes_name_intermittent_and_short_series():
    cleaned, report = _panel()
    doc = eda.panel_report(cleaned, report)
    rows = {r["unique_id"]: r for r in doc["per_series"]}
    assert set(rows) == {"seasonal", "intermittent", "short"}
    assert rows["intermittent"]["demand_class"] in ("intermittent", "lumpy") and rows["intermittent"]["zero_share"] > 0.5
    assert rows["seasonal"]["seasonal_strength"] > 0.9 and rows["short"]["seasonal_strength"] is None
    assert rows["short"]["length"] == 18 and rows["seasonal"]["start"].startswith("2010-01-01")
    assert doc["unusual"]["shortest"][0]["unique_id"] == "short"
    assert doc["unusual"]["most_intermittent"][0]["unique_id"] == "intermittent"
    notes = " ".join(doc["families"])
    assert "intermittent or lumpy" in notes and "Seasonal Naive and AutoETS are weak" in notes
    assert "fewer than 2 seasons" in notes and "tiny" in notes  # dropped series named with the reason
    assert doc["panel"]["distributions"]["length"]["max"] == 96
    json.loads(json.dumps(doc))  # JSON-able
    md = eda.to_markdown(doc, {"x": "data:image/png;base64,AAAA"})
    assert "Exploratory report" in md and "![x](data:image/png;base64,AAAA)" in md


def test_when_plots_are_made_then_they_are_pngs_of_the_distributions_and_unusual_series():
    df = load_dataset(str(LIVESTOCK), DataConfig())
    cleaned, report = clean(df, CleaningConfig(), min_length=24, horizon=12)
    doc = eda.panel_report(cleaned, report)
    images = eda.eda_plots(cleaned, doc)
    assert "Feature distributions" in images and len(images) == 4
    assert all(png.startswith(b"\x89PNG") for png in images.values())
    assert doc["unusual"]["most_outliers"], "livestock has flagged points"
    assert f"Series {doc['unusual']['most_outliers'][0]['unique_id']}" in images


def test_when_the_task_runs_then_eda_json_is_written_into_the_run_data_prefix(tmp_path):
    from chronos_flows.training.specs import RunSpec
    from tasks.eda import explore_data

    params = build_params(store=str(tmp_path / "store"), run_id="eda-task-1")
    store = open_store(params.store_url())
    spec = RunSpec(params=params, store=store, run_id="eda-task-1", workdir=tmp_path / "work")
    cleaned, report = _panel()
    key = explore_data.fn(spec, cleaned, report)
    assert key == layout.eda_key(params.env, "eda-task-1") == f"{params.env}/eda-task-1/data/eda.json"
    doc = json.loads(store.get(key)[0])
    assert doc["series"] == 3 and doc["freq"] == "MS"


# --------------------------------------------------------------------------------------- CLI
def _eda(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    full_env = dict(os.environ, PYTHONPATH=str(root), **(env or {}))
    return subprocess.run([sys.executable, "-m", "app.cli", "eda", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300)


def test_when_eda_reads_a_csv_then_it_prints_the_report_and_writes_nothing(tmp_path, capsys):
    assert main(["eda", "--data", str(LIVESTOCK)]) == 0
    out = capsys.readouterr().out
    assert "42 series" in out and "Which families suit the panel" in out
    assert list(tmp_path.iterdir()) == []


def test_when_eda_reads_parquet_as_json_then_every_series_is_in_it(tmp_path, capsys):
    path = tmp_path / "livestock.parquet"
    pd.read_csv(LIVESTOCK, parse_dates=["ds"]).to_parquet(path)
    assert main(["eda", "--data", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["series"] == 42 and doc["freq"] == "MS" and len(doc["per_series"]) == 42


def test_when_eda_reads_from_s3_then_it_works_like_a_local_file(aws_env, capsys):
    s3 = aws_env.client("s3")
    bucket = aws_env.new_bucket()
    s3.put_object(Bucket=bucket, Key="in/gasoline.csv", Body=DEFAULT_DATA.read_bytes())
    assert main(["eda", "--data", f"s3://{bucket}/in/gasoline.csv", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["series"] == 1 and doc["season_length"] == 52
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])] == ["in/gasoline.csv"]


@pytest.mark.parametrize(("content", "expected"), [
    ("unique_id,ds,value\na,2020-01-01,1\n", "'y'"),           # no target column
    ("unique_id,ds,y\n", "no data rows"),                       # empty
])
def test_when_eda_gets_bad_input_then_it_exits_2_naming_the_problem_and_writes_nothing(tmp_path, content, expected):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    work = tmp_path / "cwd"
    work.mkdir()
    res = _eda(["--data", str(bad)], work)
    assert res.returncode == 2, res.stderr
    assert expected in res.stderr and "Traceback" not in res.stderr
    assert list(work.iterdir()) == []


def test_when_eda_file_is_missing_then_it_exits_2(tmp_path, capsys):
    assert main(["eda", "--data", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv" in capsys.readouterr().err
