"""`chronos-flows SUB --help`: every subcommand has a description, every option a help string, and
``--help`` exits 0 at every level (the real entry point in a subprocess)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


SUBCOMMANDS = sorted(_subcommands())


def test_when_the_parser_is_built_then_it_has_the_documented_subcommands():
    assert {"run", "forecast", "status", "kill", "verify-cleanup", "cleanup", "runs", "infra"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_when_a_subcommand_is_built_then_it_has_a_description_and_every_option_has_help(name):
    sp = _subcommands()[name]
    assert sp.description and len(sp.description) > 40, f"`{name}` has no description"
    undocumented = [
        "/".join(a.option_strings) or a.dest
        for a in sp._actions
        if not isinstance(a, argparse._HelpAction) and (not a.help or a.help == argparse.SUPPRESS)
    ]
    assert not undocumented, f"`{name}`: options without help: {undocumented}"


@pytest.mark.parametrize(
    "argv",
    [[name, "--help"] for name in SUBCOMMANDS] + [["--help"], ["runs", "show", "--help"], ["infra", "validate", "--help"]],
    ids=lambda argv: " ".join(argv),
)
def test_when_help_is_asked_at_any_level_then_it_exits_0_and_prints_that_commands_description(argv):
    res = subprocess.run([sys.executable, "-m", "app.cli", *argv], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: chronos-flows"), res.stdout[:200]
    if argv[0] != "--help":
        sp = _subcommands()[argv[0]]
        assert f"usage: chronos-flows {argv[0]}" in res.stdout
        first_words = " ".join(sp.description.split()[:4])
        assert first_words in " ".join(res.stdout.split()), res.stdout


def test_when_status_or_kill_take_config_then_the_help_says_what_they_use_it_for():
    subs = _subcommands()
    assert "store, env" in " ".join(subs["status"].format_help().split())
    assert "compute.backend=ec2" in " ".join(subs["kill"].format_help().split())
    assert "cfn-lint" in subs["infra"].format_help()
