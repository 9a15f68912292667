"""The run's exploratory report: a thin task over :mod:`chronos_flows.data.eda`.

Writes ``eda.json`` into the run's data prefix (``layout.eda_key``; the run summary's ``artifacts``
links to it) and a Prefect markdown artifact ``eda-<run_id>`` with the plots embedded as data URIs."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from prefect import task

from chronos_flows.core import layout
from chronos_flows.data import eda
from chronos_flows.data.cleaning import CleaningReport
from chronos_flows.training.specs import RunSpec
from tasks.common import ON_TRANSIENT, logger, markdown_artifact, png_data_uri


def explore(cleaned: pd.DataFrame, report: CleaningReport, cfg: Any = None) -> tuple[dict[str, Any], str]:
    """``(eda, markdown with the plots embedded)`` — shared by the run and ``chronos-flows eda``."""
    doc = eda.panel_report(cleaned, report)
    images = {title: png_data_uri(png) for title, png in eda.eda_plots(cleaned, doc, cfg).items()}
    return doc, eda.to_markdown(doc, images)


@task(name="explore-data", **ON_TRANSIENT)
def explore_data(spec: RunSpec, cleaned: pd.DataFrame, report: CleaningReport) -> str:
    """Compute the report, write ``eda.json`` (one atomic put) and the ``eda-<run_id>`` artifact; the key."""
    doc, markdown = explore(cleaned, report, spec.params.cleaning)
    key = layout.eda_key(spec.env, spec.run_id)
    spec.store.put(key, json.dumps(doc, indent=2, default=str).encode())
    markdown_artifact(f"eda-{spec.run_id}", markdown, "Exploratory report of the run's data")
    logger().info("exploratory report of %d series written to %s (%d family notes)", doc["series"], spec.store.uri(key),
                  len(doc["families"]))
    return key
