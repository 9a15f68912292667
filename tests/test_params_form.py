"""The flow parameters as the Prefect UI renders them: every section and field has a title and a
description, titles read as words, and the data file's default is not a path frozen at deploy time.
Also the helpers that embed pictures in artifacts (what makes plots visible in the UI)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from chronos_flows.config.params import (
    DEFAULT_DATA,
    DataConfig,
    ForecastParams,
    TrainingParams,
    build_params,
    resolve_data_path,
)
from chronos_flows.tuning.study import TuningParams

AUTO_TITLE = re.compile(r"\b(Iqr|Ami|Id|Ec2|Gb|Lr|N)\b")


def _sections(schema: dict) -> list[tuple[str, dict]]:
    """Every (path, property) of a model's JSON schema, a ``$ref`` merged with its definition as the
    UI's form does (the referenced model's title/description apply when the field repeats none)."""
    defs = schema.get("$defs") or schema.get("definitions") or {}
    out: list[tuple[str, dict]] = []

    def resolve(prop: dict) -> dict:
        ref = prop.get("$ref") or next((a["$ref"] for a in prop.get("anyOf", []) if "$ref" in a), None)
        if ref is None:
            return prop
        return {**defs[ref.rsplit("/", 1)[-1]], **{k: v for k, v in prop.items() if k != "$ref"}}

    def walk(model: dict, prefix: str) -> None:
        for name, prop in model.get("properties", {}).items():
            merged = resolve(prop)
            out.append((prefix + name, merged))
            if "properties" in merged:
                walk(merged, f"{prefix}{name}.")

    walk(schema, "")
    return out


@pytest.mark.parametrize("model", [TrainingParams, ForecastParams, TuningParams])
def test_when_the_parameter_schema_is_built_then_every_section_and_field_has_a_title_and_description(model):
    schema = model.model_json_schema()
    assert schema.get("title") and schema.get("description"), schema.get("title")
    fields = _sections(schema)
    assert len(fields) > 10
    missing = [path for path, prop in fields if not prop.get("title") or not prop.get("description")]
    assert not missing, f"fields without title or description: {missing}"
    auto = [(path, prop["title"]) for path, prop in fields if AUTO_TITLE.search(prop["title"])]
    assert not auto, f"automatic titles left: {auto}"
    sections = [path for path, prop in fields if "properties" in prop]
    if model is TrainingParams:
        assert {"data", "cleaning", "chronos", "prophet", "autoets", "evaluation", "compute", "compute.ec2", "lock"} <= set(sections)


def test_when_titles_are_read_then_they_are_the_words_a_user_knows():
    titles = {path: prop["title"] for path, prop in _sections(TrainingParams.model_json_schema())}
    assert titles["cleaning.outlier_iqr_k"] == "Outlier IQR multiplier"
    assert titles["compute.ec2.ami_id"] == "AMI id"
    assert titles["data.path"] == "Data file"
    assert titles["data"] == "Data"


def test_when_the_deployment_schema_is_built_then_the_flow_parameter_is_described_and_no_data_path_is_frozen():
    from flows.forecast import chronos_forecast
    from flows.training import chronos_training
    from flows.tuning import chronos_tuning

    for flow in (chronos_training, chronos_forecast, chronos_tuning):
        schema = flow.parameters.model_dump()
        default = schema["properties"]["params"].get("default") or {}
        default = default.get("training", default)  # the tuning flow's base training settings
        # the form's default: empty, resolved by the run (never this machine's absolute path)
        assert (default.get("data") or {}).get("path") is None, default.get("data")
        assert str(DEFAULT_DATA) not in str(schema)
    for flow in (chronos_training, chronos_forecast, chronos_tuning):
        assert flow.parameters.model_dump()["properties"]["params"].get("description"), flow.name


def test_when_data_path_is_empty_then_the_run_resolves_the_shipped_file_from_its_working_directory(tmp_path, monkeypatch):
    assert TrainingParams().data.path is None
    assert build_params().data.path is None  # `chronos-flows run` with no arguments
    assert resolve_data_path("s3://b/k.csv") == "s3://b/k.csv"
    assert resolve_data_path("rel/x.csv") == "rel/x.csv"

    monkeypatch.chdir(tmp_path)  # no data/ here: the file next to the package
    assert resolve_data_path(None) == resolve_data_path("") == str(DEFAULT_DATA)

    local = tmp_path / "data" / "us_gasoline.csv"  # a deployment's checkout: its own copy
    local.parent.mkdir()
    local.write_bytes(DEFAULT_DATA.read_bytes())
    assert resolve_data_path(None) == str(Path.cwd() / "data" / "us_gasoline.csv")

    from chronos_flows.data.ingest import load_dataset

    df = load_dataset(None, DataConfig())
    assert len(df) > 100 and df["unique_id"].nunique() == 1


def test_when_a_picture_is_embedded_then_the_markdown_carries_the_png_as_a_data_uri():
    from tasks.common import embed_images, image_markdown

    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
    md = image_markdown("Loss [train]", png)
    uri = re.search(r"\]\((data:image/png;base64,[A-Za-z0-9+/=]+)\)", md).group(1)
    assert base64.b64decode(uri.split(",", 1)[1]) == png
    assert md.startswith("### Loss [train]") and "![Loss train](" in md

    report = "# r\n\n![plot_best](plots/best_a.png)\n\n![plot_worst](plots/worst_b.png)\n"
    out = embed_images(report, {"plots/best_a.png": png, "plots/worst_b.png": png})
    assert "plots/" not in out and out.count("data:image/png;base64,") == 2
