"""Chronos training checkpoints: atomic ``checkpoint-<step>`` directories (model, optimizer,
scheduler, sampler and RNG states in ``training_state.pt``; step, history and the run's identity in
``trainer_state.json``), the newest one read back for resume, and which ones to keep."""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from chronos_flows.errors import ConfigError, TrainingError

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.pt"
META_FILE = "trainer_state.json"


def rng_states() -> dict:
    import torch

    out = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict) -> None:
    import torch

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def cpu_state_dict(model) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@dataclass
class Checkpoint:
    path: Path
    meta: dict
    state: dict

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def write_checkpoint(checkpoint_dir: Path, step: int, meta: dict, state: dict, keep: int = 2) -> Path:
    """Write ``checkpoint-<step>`` atomically: a temporary directory renamed into place, then prune old ones."""
    import torch

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = checkpoint_dir / f".tmp-{CHECKPOINT_PREFIX}{step:08d}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    try:
        torch.save(state, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=str))
        for f in (tmp / STATE_FILE, tmp / META_FILE):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(checkpoint_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(checkpoint_dir: Optional[Path]) -> list[Path]:
    """Checkpoint directories, oldest first (temporary directories of interrupted writes are ignored)."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return []
    found = []
    for p in Path(checkpoint_dir).iterdir():
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX):
            try:
                found.append((int(p.name[len(CHECKPOINT_PREFIX):]), p))
            except ValueError:
                continue
    return [p for _, p in sorted(found)]


def load_latest_checkpoint(checkpoint_dir: Optional[Path]) -> Optional[Checkpoint]:
    """The newest checkpoint, fully read; a checkpoint that cannot be read is an error (not silently skipped)."""
    import torch

    paths = list_checkpoints(checkpoint_dir)
    if not paths:
        return None
    path = paths[-1]
    try:
        meta = json.loads((path / META_FILE).read_text())
        int(meta["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(
            f"checkpoint {path} is unreadable ({META_FILE}: {exc}); delete {path} to resume from an older "
            "checkpoint or the checkpoint directory to start over"
        ) from None
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "model" not in state:
            raise ValueError("no model state inside")
    except Exception as exc:  # torch raises many types for corrupt files
        raise TrainingError(
            f"checkpoint {path} is unreadable ({STATE_FILE}: {type(exc).__name__}: {exc}); delete {path} to resume "
            "from an older checkpoint or the checkpoint directory to start over"
        ) from None
    return Checkpoint(path=path, meta=meta, state=state)


def checkpoint_step(name: str) -> Optional[int]:
    """The step of a ``checkpoint-<step>`` directory name (None for anything else)."""
    if not name.startswith(CHECKPOINT_PREFIX):
        return None
    try:
        return int(name[len(CHECKPOINT_PREFIX):])
    except ValueError:
        return None


def checkpoints_to_keep(names: list[str], best_step: Optional[int], policy: str = "best-and-last") -> set[str]:
    """The checkpoint directory names ``policy`` keeps once training has succeeded.

    ``last``: the newest. ``best-and-last``: also the first checkpoint at or after ``best_step`` (the
    checkpoint of the best validation step, or the first one after it, which carries the best weights
    as ``best_model``). ``all``: every one. Names that are not checkpoints are always kept.
    """
    steps = {n: checkpoint_step(n) for n in names}
    ckpts = sorted((s, n) for n, s in steps.items() if s is not None)
    keep = {n for n, s in steps.items() if s is None}
    if policy == "all" or not ckpts:
        return keep | {n for _, n in ckpts}
    if policy not in ("best-and-last", "last"):
        raise ConfigError(f"chronos.keep_checkpoints must be best-and-last, last or all, not {policy!r}")
    keep.add(ckpts[-1][1])
    if policy == "best-and-last" and best_step is not None:
        keep.add(next((n for s, n in ckpts if s >= best_step), ckpts[-1][1]))
    return keep


def check_checkpoint_compatible(ckpt: Checkpoint, expected: dict) -> None:
    for key, value in expected.items():
        if ckpt.meta.get(key) != value:
            raise TrainingError(
                f"checkpoint {ckpt.path} was written by a different training run ({key}: checkpoint has "
                f"{ckpt.meta.get(key)!r}, this run {value!r}); use a fresh checkpoint directory or restore the "
                "original configuration"
            )
