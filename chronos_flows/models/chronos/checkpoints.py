"""Chronos training checkpoints: atomic ``checkpoint-<step>`` directories, the newest one read back
for resume, and which ones to keep.

Two layouts share the directory naming (``checkpoint-<8-digit step>``):

* ``trainer`` (Chronos-Bolt and T5, written by Hugging Face ``Trainer``): its own files
  (``model.safetensors``, ``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``, ``trainer_state.json``)
  plus ours, added before the directory is renamed into place: ``chronos_flows.json`` (step, history,
  best validation loss, early stopping and the run's identity) and ``best_model.safetensors`` (the
  weights of the best validation step). ``Trainer.train(resume_from_checkpoint=...)`` reads it back.
* ``state`` (Chronos-2, and Bolt/T5 checkpoints written before the Trainer loop): model, optimizer,
  scheduler and RNG states in ``training_state.pt``; step, history and identity in ``trainer_state.json``.
"""

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

from chronos_flows.core.errors import ConfigError, TrainingError

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.pt"
META_FILE = "trainer_state.json"
#: our part of a Trainer checkpoint: step, history, best validation loss, early stopping, identity
LOOP_META_FILE = "chronos_flows.json"
#: the best validation step's weights inside a Trainer checkpoint
BEST_FILE = "best_model.safetensors"
#: what Trainer writes and needs to resume (besides ``rng_state.pth``, whose absence it tolerates)
TRAINER_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", META_FILE)


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
    state: dict  # the ``state`` layout's training_state.pt; empty for a Trainer checkpoint (Trainer reads it)
    kind: str = "state"  # "state" or "trainer" (see the module docstring)

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
        _move_into_place(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    prune_local(checkpoint_dir, keep)
    return final


def publish_trainer_checkpoint(staged: Path, checkpoint_dir: Path, step: int, meta: dict,
                               best_state: Optional[dict], keep: int = 2) -> Path:
    """Add our files to a checkpoint ``Trainer`` wrote under ``staged`` and rename it atomically to
    ``checkpoint_dir/checkpoint-<step>``, then prune old ones (the same naming and visibility as
    :func:`write_checkpoint`: a directory under that name is always complete)."""
    from safetensors.torch import save_file

    if not staged.is_dir():
        raise TrainingError(f"Trainer did not write the checkpoint of step {step} to {staged}")
    (staged / LOOP_META_FILE).write_text(json.dumps(meta, indent=1, default=str))
    if best_state is not None:
        save_file({k: v.contiguous() for k, v in best_state.items()}, str(staged / BEST_FILE))
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step:08d}"
    _move_into_place(staged, final)
    prune_local(checkpoint_dir, keep)
    return final


def _move_into_place(tmp: Path, final: Path) -> None:
    for f in tmp.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


#: under a checkpoint directory with an uploader attached: one empty file per checkpoint whose
#: upload to the store is confirmed (``chronos_flows.training.fit.CheckpointSync`` writes them)
UPLOADED_DIR = ".uploaded"


def mark_uploaded(checkpoint_dir: Path, name: str) -> None:
    """Record that checkpoint ``name`` is safely in the store (it may now be pruned locally)."""
    d = Path(checkpoint_dir) / UPLOADED_DIR
    d.mkdir(parents=True, exist_ok=True)
    (d / name).touch()


def prune_local(checkpoint_dir: Path, keep: int = 2) -> None:
    """Keep the newest ``keep`` local checkpoints (the store keeps what ``checkpoints_to_keep`` says).
    With an uploader attached (``.uploaded/`` exists) an older checkpoint whose upload is not
    confirmed yet is kept too: through a store outage it is the only copy."""
    uploaded = Path(checkpoint_dir) / UPLOADED_DIR
    for old in list_checkpoints(checkpoint_dir)[:-keep]:
        if uploaded.is_dir() and not (uploaded / old.name).exists():
            continue
        shutil.rmtree(old, ignore_errors=True)


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
    """The newest checkpoint, read (``state`` layout) or checked complete (``trainer`` layout); a
    checkpoint that cannot be read is an error (not silently skipped)."""
    paths = list_checkpoints(checkpoint_dir)
    if not paths:
        return None
    path = paths[-1]
    if (path / LOOP_META_FILE).exists() or (path / TRAINER_FILES[0]).exists():
        return _read_trainer_checkpoint(path)
    return _read_state_checkpoint(path)


def _unreadable(path: Path, what: str, exc: BaseException) -> TrainingError:
    return TrainingError(
        f"checkpoint {path} is unreadable ({what}: {type(exc).__name__}: {exc}); delete {path} to resume from an "
        "older checkpoint or the checkpoint directory to start over"
    )


def _read_meta(path: Path, name: str) -> dict:
    try:
        meta = json.loads((path / name).read_text())
        int(meta["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _unreadable(path, name, exc) from None
    return meta


def _read_state_checkpoint(path: Path) -> Checkpoint:
    import torch

    meta = _read_meta(path, META_FILE)
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "model" not in state:
            raise ValueError("no model state inside")
    except Exception as exc:  # torch raises many types for corrupt files
        raise _unreadable(path, STATE_FILE, exc) from None
    return Checkpoint(path=path, meta=meta, state=state, kind="state")


def _read_trainer_checkpoint(path: Path) -> Checkpoint:
    """Our metadata read, Trainer's files checked present and the weights files' headers readable
    (Trainer loads them when it resumes)."""
    from safetensors import safe_open

    meta = _read_meta(path, LOOP_META_FILE)
    for name in TRAINER_FILES:
        if not (path / name).is_file():
            raise _unreadable(path, name, FileNotFoundError("missing"))
    try:
        json.loads((path / META_FILE).read_text())["global_step"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _unreadable(path, META_FILE, exc) from None
    for name in ("model.safetensors", BEST_FILE):
        if name == BEST_FILE and not (path / name).exists():
            continue
        try:
            with safe_open(str(path / name), framework="pt") as fh:
                list(fh.keys())
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise _unreadable(path, name, exc) from None
    return Checkpoint(path=path, meta=meta, state={}, kind="trainer")


def load_weights(model, path: Path) -> None:
    """Load a safetensors weights file into ``model``; keys ``save_pretrained`` leaves out are tied to ones it
    keeps (T5's shared embeddings), anything else missing is an error."""
    from safetensors.torch import load_file

    weights = load_file(str(path))
    result = model.load_state_dict(weights, strict=False)
    current = model.state_dict()
    loaded = {current[k].data_ptr() for k in weights if k in current}
    bad = [k for k in result.missing_keys if current[k].data_ptr() not in loaded] + list(result.unexpected_keys)
    if bad:
        raise TrainingError(f"checkpoint weights {path} do not fit the model (keys {', '.join(bad[:5])})")


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
