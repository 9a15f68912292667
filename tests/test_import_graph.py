"""The import graph of the product code (app/, flows/, tasks/, blocks/, chronos_flows/), built from
the source with ``ast`` — imports inside functions included: no cycle, no private name taken from
another module, no cloud SDK or Prefect in the domain, and each domain subpackage importing only what
its ``__init__`` docstring declares after "May import:"."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("app", "flows", "tasks", "blocks", "chronos_flows")
CLOUD_AND_PREFECT = ("boto3", "botocore", "prefect", "prefect_aws", "prefect_dask")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """``(module imported, names taken from it, line)`` for every import statement, at any depth."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            # ``from pkg import submodule`` imports the submodule
            subs = [n for n in names if f"{target}.{n}" in modules]
            out.extend((f"{target}.{n}", [], node.lineno) for n in subs)
            rest = [n for n in names if n not in subs]
            if rest or not subs:
                out.append((target, rest, node.lineno))
    return out


def _graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[str, list[str], int]]]]:
    modules = _modules()
    raw = {name: _imports(name, path, modules) for name, path in modules.items()}
    graph: dict[str, set[str]] = {}
    for name, imps in raw.items():
        edges = set()
        for target, _, _ in imps:
            # the deepest module of ours that the import names (a package's __init__ counts)
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph, raw


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_ancestor_package(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_when_the_import_graph_is_built_then_it_has_no_cycle():
    graph, _ = _graph()
    # a package __init__ importing its own submodules (serving re-exports its parts) is not a cycle
    graph = {m: {t for t in ts if not _is_ancestor_package(m, t) and not _is_ancestor_package(t, m)} for m, ts in graph.items()}
    assert _cycles(graph) == []


def test_when_a_module_takes_a_private_name_then_it_is_its_own():
    _, raw = _graph()
    offenders = []
    for name, imps in raw.items():
        for target, names, line in imps:
            if not target.startswith(LAYERS):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private or target.rpartition(".")[2].startswith("_") and not target.endswith("__init__"):
                offenders.append(f"{name}:{line} takes {private or target} from {target}")
    assert offenders == []


def test_when_domain_code_imports_then_never_a_cloud_sdk_or_prefect_at_any_level():
    _, raw = _graph()
    offenders = [f"{name}:{line} imports {target}" for name, imps in raw.items() if name.startswith("chronos_flows")
                 for target, _, line in imps if target.split(".")[0] in CLOUD_AND_PREFECT]
    assert offenders == []


def _declared(pkg_init: Path) -> set[str] | None:
    doc = ast.get_docstring(ast.parse(pkg_init.read_text())) or ""
    m = re.search(r"May import:\s*(.+?)\.?\s*$", doc, re.S)
    if not m:
        return None
    text = m.group(1).strip()
    if text.startswith("nothing"):
        return set()
    return {p.strip().split("/")[0] for p in text.replace("\n", " ").split(",") if p.strip()}


def test_when_a_domain_subpackage_imports_then_only_what_its_docstring_declares():
    graph, _ = _graph()
    subpackages = sorted(p.parent.name for p in (ROOT / "chronos_flows").glob("*/__init__.py"))
    declared = {}
    for sub in subpackages:
        allowed = _declared(ROOT / "chronos_flows" / sub / "__init__.py")
        assert allowed is not None, f"chronos_flows/{sub}/__init__.py does not say what it may import ('May import: ...')"
        unknown = allowed - set(subpackages)
        assert not unknown, f"chronos_flows/{sub} declares unknown subpackages {sorted(unknown)}"
        declared[sub] = allowed
    offenders = []
    for name, targets in graph.items():
        parts = name.split(".")
        if parts[0] == "chronos_flows" and len(parts) >= 2 and parts[1] in declared:
            for t in targets:
                tp = t.split(".")
                if tp[0] in ("app", "flows", "tasks", "blocks"):
                    offenders.append(f"{name} imports the upper layer {t}")
                elif tp[0] == "chronos_flows" and len(tp) >= 2 and tp[1] != parts[1] and tp[1] not in declared[parts[1]]:
                    offenders.append(f"{name} imports {t}, not declared by chronos_flows/{parts[1]}")
        elif parts[0] == "chronos_flows" and len(parts) == 2:  # a module left flat in the domain root
            offenders.append(f"{name} is not in a subpackage")
    assert sorted(offenders) == []


def test_when_the_graph_builder_sees_a_cycle_then_it_reports_it():
    """The checker itself: a two-module circle and a three-module circle are found, a chain is not."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
