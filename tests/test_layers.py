"""The layering rules of ARCHITECTURE.md that a machine can check: the domain package imports
neither Prefect nor boto3 at module level, nor the layers above it (app/, flows/, tasks/), and the
instance entry point imports without Prefect."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("prefect", "prefect_aws", "boto3", "botocore")
#: the layers above the domain package (ARCHITECTURE.md: arrows point down)
UPPER_LAYERS = ("app", "flows", "tasks")
#: modules that still import them at top level, and why (issue 13: move them to an app layer)
EXCEPTIONS: dict[str, str] = {}


def _top_level_imports(tree: ast.Module) -> set[str]:
    """Roots of the modules imported by statements executed at import time (not in functions)."""
    found: set[str] = set()

    def visit(nodes) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.ClassDef):
                visit(node.body)
            else:
                visit(ast.iter_child_nodes(node))

    visit(tree.body)
    return found


def test_when_domain_modules_are_parsed_then_none_imports_prefect_or_boto3_at_top_level():
    offenders = {}
    for path in sorted((ROOT / "chronos_flows").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        bad = sorted(_top_level_imports(ast.parse(path.read_text(), name)) & set(FORBIDDEN))
        if bad and name not in EXCEPTIONS:
            offenders[name] = bad
    assert not offenders, offenders


def test_when_domain_modules_are_parsed_then_none_imports_the_app_flows_or_tasks_layers_at_top_level():
    offenders = {}
    for path in sorted((ROOT / "chronos_flows").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        bad = sorted(_top_level_imports(ast.parse(path.read_text(), name)) & set(UPPER_LAYERS))
        if bad:
            offenders[name] = bad
    assert not offenders, offenders
    assert not (ROOT / "chronos_flows" / "cli.py").exists() and (ROOT / "app" / "cli.py").exists()


def test_when_the_instance_entry_point_is_imported_then_prefect_is_not():
    code = ("import sys, app.bootstrap, chronos_flows.training.fit; "
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'boto3')); "
            "assert not loaded, loaded")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_when_the_cli_is_imported_then_its_lazy_groups_stay_unloaded_and_its_other_imports_are_at_the_top():
    """app/cli.py keeps only Prefect, the pandas-based data modules and the server lazy (measured
    in its header); everything else is a top-level import, and importing it loads none of the three."""
    code = ("import sys, app.cli; "
            "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'pandas', 'fastapi', 'flows', 'tasks', 'torch'}); "
            "assert not loaded, loaded")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lazy_ok = ("flows.", "tasks.", "prefect", "app.server", "chronos_flows.data.cleaning", "chronos_flows.data.ingest",
               "chronos_flows.data.eda", "chronos_flows.evaluation.splits", "chronos_flows.forecasting.batch",
               "chronos_flows.tuning.study", "chronos_flows.monitoring")
    inner = []
    for node in ast.walk(ast.parse((ROOT / "app" / "cli.py").read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and not (sub.module or "").startswith(lazy_ok):
                    inner.append(f"{node.name}: from {sub.module}")
                elif isinstance(sub, ast.Import):
                    inner += [f"{node.name}: import {a.name}" for a in sub.names if not a.name.startswith(lazy_ok)]
    assert not inner, inner
