"""Chronos training: window sampling, atomic checkpoints, the Bolt/T5 loop and the Chronos-2 ``fit`` wrapper.

* Chronos-2 trains with upstream ``Chronos2Pipeline.fit`` (HF Trainer; full or LoRA). A
  ``TrainerCallback`` adds what ``fit`` lacks: our atomic checkpoints (model, optimizer, scheduler,
  RNG states), resume from them (restored at ``on_train_begin``), early stopping on validation
  loss with the best weights restored, progress and logging.
* Chronos-Bolt and T5 have no ``fit`` upstream: a plain loop on the model's own loss
  (``ChronosBoltModelForForecasting.forward(context, target).loss``; T5 cross-entropy on the
  tokenizer's labels), with transformers' ``get_scheduler``, gradient accumulation and the same
  checkpoint format.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from chronos_flows.errors import BadInputError, ConfigError, TrainingError
from chronos_flows.models.base import ID, TARGET, TIME

logger = logging.getLogger("chronos_flows.train")

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.pt"
META_FILE = "trainer_state.json"


# ----------------------------------------------------------------------------------------------
# data


def series_blocks(frame: pd.DataFrame) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """``(ids, arrays, last_ds)``: per-series float32 arrays sorted by time, ids in sorted order and
    each series' last timestamp, from a long ``unique_id/ds/y`` frame. Vectorised (one factorize,
    one lexsort, one split): on large panels a per-series pandas loop costs more than the model."""
    missing = [c for c in (ID, TIME, TARGET) if c not in frame.columns]
    if missing:
        raise BadInputError(f"training frame is missing column(s) {', '.join(missing)}; expected unique_id, ds, y")
    if frame.empty:
        raise BadInputError("training frame is empty; nothing to train on")
    codes, uniques = pd.factorize(frame[ID].astype(str), sort=True)
    times = pd.to_datetime(frame[TIME]).to_numpy()
    order = np.lexsort((times, codes))
    codes = codes[order]
    y = frame[TARGET].to_numpy(dtype=np.float32, na_value=np.nan)[order]
    bounds = np.flatnonzero(np.diff(codes)) + 1
    ends = np.r_[bounds, len(codes)] - 1
    return [str(u) for u in uniques], np.split(y, bounds), times[order][ends]


def series_arrays(frame: pd.DataFrame) -> tuple[list[str], list[np.ndarray]]:
    """Per-series float32 arrays (sorted by time) from a long ``unique_id/ds/y`` frame."""
    ids, arrays, _ = series_blocks(frame)
    return ids, arrays


def data_fingerprint(frame: pd.DataFrame, horizon: int) -> str:
    """A content hash of the training frame (ids, timestamps, values) and the horizon: the
    ``training_data_fingerprint`` of a Chronos model and its checkpoints. Not the run's
    ``data_fingerprint`` (the hash of the whole cleaned dataset, ``chronos_flows.ingest.fingerprint``):
    the training frame leaves out the backtest windows."""
    cols = [c for c in (ID, TIME, TARGET) if c in frame.columns]
    h = hashlib.sha256()
    h.update(pd.util.hash_pandas_object(frame[cols].sort_values(cols[:2]), index=False).to_numpy().tobytes())
    h.update(f"h={horizon}".encode())
    return h.hexdigest()[:32]


#: Validation windows held out at the end of each series (rolling, ``horizon`` apart). One window of a
#: single series is too noisy to choose a checkpoint: on the gasoline series its loss and the backtest
#: disagreed; several consecutive windows track the backtest.
VAL_WINDOWS = 4
#: Restore the weights of the best validation step at the end of training.
RESTORE_BEST = True


@dataclass
class TrainData:
    train: list[np.ndarray]  # training part of each usable series (final validation span held out)
    val: list[np.ndarray]  # validation inputs: each one's final horizon is a validation window
    min_past: int
    skipped: list[str] = field(default_factory=list)


def split_train_val(ids: list[str], arrays: list[np.ndarray], horizon: int, val_windows: Optional[int] = None) -> TrainData:
    """Hold out each series' final ``k × horizon`` points as ``k`` rolling validation windows.

    ``k`` is ``val_windows`` (default :data:`VAL_WINDOWS`), fewer for a series whose training part would
    otherwise be too short. A training window needs ``min_past + horizon`` points with
    ``min_past = horizon`` (as upstream's default). Series too short to train on are skipped; when none
    can also give a validation window, training runs on the full series without validation (logged).
    """
    k_max = max(1, int(VAL_WINDOWS if val_windows is None else val_windows))
    min_past = max(1, horizon)
    need = min_past + horizon
    train, val, skipped = [], [], []
    for uid, a in zip(ids, arrays):
        k = k_max
        while k > 1 and len(a) - k * horizon < max(need, len(a) // 2):  # never hold out more than half a series
            k -= 1
        if len(a) - k * horizon >= need:
            train.append(a[: len(a) - k * horizon])
            val.extend(a[: len(a) - j * horizon] for j in range(k))
        elif len(a) >= need:
            train.append(a)  # too short to also hold out a window
            skipped.append(uid)
        else:
            skipped.append(uid)
    if not train:
        shortest = min(zip(ids, arrays), key=lambda t: len(t[1]))
        raise BadInputError(
            f"no series is long enough to train on: each needs at least {need} points (2 × horizon {horizon}); "
            f"the shortest is {shortest[0]!r} with {len(shortest[1])}; shorten evaluation.horizon or use mode zero-shot"
        )
    if skipped:
        logger.warning("%d series too short for a training+validation window: %s", len(skipped), ", ".join(skipped[:10]))
    return TrainData(train=train, val=val, min_past=min_past, skipped=skipped)


class WindowSampler:
    """Seeded random (context, target) windows: series chosen in proportion to their window count."""

    def __init__(self, series: list[np.ndarray], context_length: int, horizon: int, min_past: int, seed: int):
        self.C, self.H, self.min_past = context_length, horizon, min_past
        self.padded = [np.concatenate([np.full(context_length, np.nan, np.float32), s]) for s in series]
        counts = np.array([len(s) - min_past - horizon + 1 for s in series], dtype=np.float64)
        self.series = [i for i, c in enumerate(counts) if c > 0]
        self.lengths = np.array([len(series[i]) for i in self.series])
        w = counts[self.series]
        self.p = w / w.sum()
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        pick = self.rng.choice(len(self.series), size=n, p=self.p)
        ctx = np.empty((n, self.C), np.float32)
        tgt = np.empty((n, self.H), np.float32)
        for j, k in enumerate(pick):
            length = self.lengths[k]
            t = int(self.rng.integers(self.min_past, length - self.H + 1))  # cut point in the unpadded series
            s = self.padded[self.series[k]]
            ctx[j] = s[t : t + self.C]
            tgt[j] = s[t + self.C : t + self.C + self.H]
        return ctx, tgt

    def get_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def validation_windows(val: list[np.ndarray], context_length: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    ctx = np.full((len(val), context_length), np.nan, np.float32)
    tgt = np.empty((len(val), horizon), np.float32)
    for j, s in enumerate(val):
        past = s[:-horizon][-context_length:]
        ctx[j, context_length - len(past):] = past
        tgt[j] = s[-horizon:]
    return ctx, tgt


# ----------------------------------------------------------------------------------------------
# checkpoints


def _rng_states() -> dict:
    import torch

    out = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_states(states: dict) -> None:
    import torch

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _cpu_state_dict(model) -> dict:
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


# ----------------------------------------------------------------------------------------------
# shared training state / reporting


@dataclass
class TrainState:
    step: int = 0
    history: list[dict] = field(default_factory=list)
    best_val: Optional[float] = None
    best_step: Optional[int] = None
    bad_evals: int = 0
    stopped_early: bool = False
    resumed_from: Optional[int] = None
    last_val: Optional[float] = None

    def to_meta(self) -> dict:
        return {
            "step": self.step, "history": self.history, "best_val": self.best_val, "best_step": self.best_step,
            "bad_evals": self.bad_evals, "stopped_early": self.stopped_early,
        }

    @classmethod
    def from_meta(cls, meta: dict) -> "TrainState":
        return cls(
            step=int(meta["step"]), history=list(meta.get("history", [])), best_val=meta.get("best_val"),
            best_step=meta.get("best_step"), bad_evals=int(meta.get("bad_evals", 0)),
            stopped_early=bool(meta.get("stopped_early", False)), resumed_from=int(meta["step"]),
        )


class Reporter:
    """Log lines + progress callback with step, loss, throughput and ETA."""

    def __init__(self, max_steps: int, windows_per_step: int, progress: Optional[Callable[[dict], None]], start_step: int):
        self.max_steps = max_steps
        self.windows_per_step = windows_per_step
        self.progress = progress
        self.t0 = time.perf_counter()
        self.start_step = start_step
        self.elapsed_before = 0.0

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def rate(self, step: int) -> float:
        dt = time.perf_counter() - self.t0
        return (step - self.start_step) * self.windows_per_step / dt if dt > 0 else 0.0

    def report(self, step: int, loss: Optional[float], val_loss: Optional[float], lr: Optional[float]) -> None:
        dt = time.perf_counter() - self.t0
        steps_done = step - self.start_step
        steps_per_s = steps_done / dt if dt > 0 and steps_done > 0 else 0.0
        eta = (self.max_steps - step) / steps_per_s if steps_per_s > 0 else None
        wps = steps_per_s * self.windows_per_step
        logger.info(
            "step %d/%d loss %s val_loss %s lr %s %.1f windows/s ETA %s",
            step, self.max_steps, _fmt(loss), _fmt(val_loss), _fmt(lr), wps,
            f"{eta:.0f}s" if eta is not None else "?",
        )
        if self.progress is not None:
            self.progress({
                "step": step, "max_steps": self.max_steps, "loss": loss, "val_loss": val_loss,
                "windows_per_s": wps, "eta_s": eta,
            })


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.4g}"


def log_every_of(cfg: Any) -> int:
    return int(getattr(cfg, "log_every", None) or max(1, min(10, cfg.eval_every, cfg.checkpoint_every)))


def scheduler_name(cfg: Any) -> str:
    name = cfg.lr_scheduler
    if name == "constant" and cfg.warmup_ratio > 0:
        return "constant_with_warmup"
    return name


def warmup_steps(cfg: Any) -> int:
    return int(math.floor(cfg.warmup_ratio * cfg.max_steps))


# ----------------------------------------------------------------------------------------------
# Bolt / T5: our loop on the upstream model's own loss


def model_loss_fn(pipeline, family: str) -> tuple[Any, Callable]:
    """(trainable module, loss(module, context, target)) for the upstream model's own loss."""
    import torch

    if family == "chronos-bolt":
        model = pipeline.model

        def bolt_loss(m, context: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return m(context=context, target=target).loss

        return model, bolt_loss
    if family == "chronos-t5":
        tokenizer = pipeline.tokenizer
        model = pipeline.inner_model

        def t5_loss(m, context: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            input_ids, attention_mask, scale = tokenizer.context_input_transform(context.cpu())
            labels, labels_mask = tokenizer.label_input_transform(target.cpu(), scale)
            labels[labels_mask == 0] = -100
            dev = next(m.parameters()).device
            return m(input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev), labels=labels.to(dev)).loss

        return model, t5_loss
    raise ConfigError(f"family {family!r} has no custom training loop")


def train_loop(
    pipeline,
    family: str,
    cfg: Any,
    data: TrainData,
    horizon: int,
    device_info,
    checkpoint_dir: Optional[Path],
    resume: Optional[Checkpoint],
    ckpt_identity: dict,
    progress: Optional[Callable[[dict], None]],
) -> tuple[Any, TrainState]:
    """Fine-tune a Bolt or T5 pipeline in place (on a copy made by the caller); returns (pipeline, state)."""
    import torch
    from transformers import get_scheduler

    if family == "chronos-bolt":
        model_pred = pipeline.model.chronos_config.prediction_length
        if horizon > model_pred:
            raise ConfigError(
                f"horizon {horizon} exceeds the Chronos-Bolt model's prediction_length {model_pred}; fine-tune with "
                f"evaluation.horizon <= {model_pred} or use mode zero-shot (which forecasts longer horizons autoregressively)"
            )
    device = device_info.device
    model, loss_fn = model_loss_fn(pipeline, family)
    model.to(device)
    torch.manual_seed(cfg.seed)
    sampler = WindowSampler(data.train, cfg.context_length, horizon, data.min_past, cfg.seed)
    val_ctx, val_tgt = validation_windows(data.val, cfg.context_length, horizon) if data.val else (None, None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    scheduler = get_scheduler(
        scheduler_name(cfg), optimizer, num_warmup_steps=warmup_steps(cfg), num_training_steps=cfg.max_steps
    )
    use_scaler = device == "cuda" and device_info.amp_dtype == torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    state = TrainState()
    best_state: Optional[dict] = None
    if resume is not None:
        model.load_state_dict(resume.state["model"])
        optimizer.load_state_dict(resume.state["optimizer"])
        scheduler.load_state_dict(resume.state["scheduler"])
        if scaler is not None and resume.state.get("scaler"):
            scaler.load_state_dict(resume.state["scaler"])
        sampler.set_state(resume.state["sampler"])
        _set_rng_states(resume.state["rng"])
        best_state = resume.state.get("best_model")
        state = TrainState.from_meta(resume.meta)
        logger.info("resuming from checkpoint %s at step %d/%d", resume.path, state.step, cfg.max_steps)

    accum = cfg.gradient_accumulation_steps
    log_every = log_every_of(cfg)
    reporter = Reporter(cfg.max_steps, cfg.batch_size * accum, progress, state.step)
    reporter.elapsed_before = state.history[-1]["elapsed_s"] if state.history else 0.0
    autocast = (
        (lambda: torch.autocast(device_type="cuda", dtype=device_info.amp_dtype))
        if device == "cuda" else (lambda: torch.autocast(device_type="cpu", enabled=False))
    )

    def evaluate() -> float:
        model.eval()
        total, n = 0.0, 0
        with torch.no_grad(), autocast():
            for i in range(0, len(val_ctx), cfg.batch_size):
                c = torch.from_numpy(val_ctx[i : i + cfg.batch_size]).to(device)
                t = torch.from_numpy(val_tgt[i : i + cfg.batch_size]).to(device)
                total += float(loss_fn(model, c, t)) * len(c)
                n += len(c)
        model.train()
        return total / n

    def save_ckpt() -> None:
        if checkpoint_dir is None:
            return
        st = {
            "model": _cpu_state_dict(model), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "sampler": sampler.get_state(),
            "rng": _rng_states(), "best_model": best_state,
        }
        write_checkpoint(Path(checkpoint_dir), state.step, {**ckpt_identity, **state.to_meta()}, st)

    model.train()
    running = torch.zeros((), device=device)
    running_n = 0
    while state.step < cfg.max_steps and not state.stopped_early:
        for _ in range(accum):
            ctx, tgt = sampler.sample(cfg.batch_size)
            c = torch.from_numpy(ctx).to(device, non_blocking=True)
            t = torch.from_numpy(tgt).to(device, non_blocking=True)
            with autocast():
                loss = loss_fn(model, c, t) / accum
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            running += loss.detach()
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        running_n += 1
        step = state.step
        last = step >= cfg.max_steps
        val_loss = None
        if val_ctx is not None and (step % cfg.eval_every == 0 or last):
            val_loss = evaluate()
            state.last_val = val_loss
            if state.best_val is None or val_loss < state.best_val:
                state.best_val, state.best_step, state.bad_evals = val_loss, step, 0
                best_state = _cpu_state_dict(model)
            else:
                state.bad_evals += 1
                if cfg.early_stopping_patience and state.bad_evals >= cfg.early_stopping_patience:
                    state.stopped_early = True
                    logger.info("early stopping at step %d: no validation improvement in %d evaluations (best %.4g at step %s)",
                                step, state.bad_evals, state.best_val, state.best_step)
        entry = None
        if step % log_every == 0 or last or val_loss is not None or state.stopped_early:
            loss_value = float(running) / max(running_n, 1)
            running.zero_()
            running_n = 0
            entry = {"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0], "elapsed_s": reporter.elapsed()}
            if val_loss is not None:
                entry["val_loss"] = val_loss
            state.history.append(entry)
        if step % cfg.checkpoint_every == 0 or last or state.stopped_early:
            save_ckpt()  # before reporting: a failing progress callback must not lose it
        if entry is not None:
            reporter.report(step, entry["loss"], val_loss, entry["lr"])
    if best_state is not None and RESTORE_BEST:
        model.load_state_dict(best_state)
    model.eval()
    return pipeline, state


# ----------------------------------------------------------------------------------------------
# Chronos-2: upstream Chronos2Pipeline.fit + a callback for checkpoints / resume / early stopping


def _make_chronos2_callback(cfg, state: TrainState, resume: Optional[Checkpoint], checkpoint_dir, ckpt_identity,
                            progress, windows_per_step: int, has_val: bool):
    from transformers.trainer_callback import TrainerCallback

    log_every = log_every_of(cfg)

    class ChronosFlowsCallback(TrainerCallback):
        def __init__(self):
            self.reporter: Optional[Reporter] = None
            self.best_state: Optional[dict] = None
            self.pending: Optional[dict] = None  # RNG states captured at on_step_end, saved after evaluation
            self.model = self.optimizer = self.scheduler = None
            self.last_loss: Optional[float] = None
            # a checkpoint of a finished run (max_steps reached or stopped early): the Trainer still takes one
            # step before it can stop, so ignore it and restore the checkpoint's weights at the end
            self.finished = resume is not None and (state.step >= cfg.max_steps or state.stopped_early)

        def on_train_begin(self, args, tstate, control, model=None, optimizer=None, lr_scheduler=None, **kw):
            self.model, self.optimizer, self.scheduler = model, optimizer, lr_scheduler
            if resume is not None:
                model.load_state_dict(resume.state["model"])
                optimizer.load_state_dict(resume.state["optimizer"])
                lr_scheduler.load_state_dict(resume.state["scheduler"])
                _set_rng_states(resume.state["rng"])
                self.best_state = resume.state.get("best_model")
                tstate.global_step = state.step
                logger.info("resuming from checkpoint %s at step %d/%d", resume.path, state.step, cfg.max_steps)
            self.reporter = Reporter(cfg.max_steps, windows_per_step, progress, state.step)
            self.reporter.elapsed_before = state.history[-1]["elapsed_s"] if state.history else 0.0

        def on_step_begin(self, args, tstate, control, **kw):
            if self.finished:
                control.should_training_stop = True

        def on_log(self, args, tstate, control, logs=None, **kw):
            if self.finished:
                return
            logs = logs or {}
            if "loss" in logs:
                self.last_loss = float(logs["loss"])
                step = tstate.global_step
                entry = {"step": step, "loss": self.last_loss, "lr": float(logs.get("learning_rate", float("nan"))),
                         "elapsed_s": self.reporter.elapsed()}
                state.history.append(entry)
                if not (has_val and control.should_evaluate):  # on_evaluate reports this step with its val_loss
                    self.reporter.report(step, self.last_loss, None, entry["lr"])

        def on_evaluate(self, args, tstate, control, metrics=None, **kw):
            val = (metrics or {}).get("eval_loss")
            if val is None or self.finished:
                return
            step = tstate.global_step
            val = float(val)
            state.last_val = val
            if state.history and state.history[-1]["step"] == step:
                state.history[-1]["val_loss"] = val
            else:
                state.history.append({"step": step, "loss": self.last_loss, "val_loss": val,
                                      "lr": self.scheduler.get_last_lr()[0], "elapsed_s": self.reporter.elapsed()})
            if state.best_val is None or val < state.best_val:
                state.best_val, state.best_step, state.bad_evals = val, step, 0
                self.best_state = _cpu_state_dict(self.model)
            else:
                state.bad_evals += 1
                if cfg.early_stopping_patience and state.bad_evals >= cfg.early_stopping_patience:
                    state.stopped_early = True
                    control.should_training_stop = True
                    logger.info("early stopping at step %d: no validation improvement in %d evaluations (best %.4g at step %s)",
                                step, state.bad_evals, state.best_val, state.best_step)
            if self.pending is not None:  # checkpoint first: a failing progress callback must not lose it
                self._save(self.pending)
                self.pending = None
            self.reporter.report(step, self.last_loss, val, self.scheduler.get_last_lr()[0])

        def on_step_end(self, args, tstate, control, **kw):
            if self.finished:
                control.should_training_stop = True
                control.should_evaluate = control.should_save = control.should_log = False
                return
            state.step = tstate.global_step
            if state.step % cfg.checkpoint_every == 0 or state.step >= cfg.max_steps:
                rng = _rng_states()
                if has_val and control.should_evaluate:
                    self.pending = rng  # the evaluation at this step runs next; save after it
                else:
                    self._save(rng)

        def on_train_end(self, args, tstate, control, **kw):
            if self.finished:
                self.model.load_state_dict(resume.state["model"])
            if self.pending is not None:
                self._save(self.pending)
                self.pending = None
            if self.best_state is not None and RESTORE_BEST:
                self.model.load_state_dict(self.best_state)

        def _save(self, rng: dict) -> None:
            if checkpoint_dir is None:
                return
            st = {"model": _cpu_state_dict(self.model), "optimizer": self.optimizer.state_dict(),
                  "scheduler": self.scheduler.state_dict(), "rng": rng, "best_model": self.best_state}
            write_checkpoint(Path(checkpoint_dir), state.step, {**ckpt_identity, **state.to_meta()}, st)

    return ChronosFlowsCallback()


def train_chronos2(
    pipeline,
    cfg: Any,
    data: TrainData,
    horizon: int,
    device_info,
    checkpoint_dir: Optional[Path],
    resume: Optional[Checkpoint],
    ckpt_identity: dict,
    progress: Optional[Callable[[dict], None]],
    output_dir: Path,
) -> tuple[Any, TrainState]:
    """Fine-tune with ``Chronos2Pipeline.fit`` (full or LoRA); a LoRA adapter is merged into the returned model."""
    import torch
    from chronos import Chronos2Pipeline

    state = TrainState.from_meta(resume.meta) if resume is not None else TrainState()
    has_val = bool(data.val)
    callback = _make_chronos2_callback(cfg, state, resume, checkpoint_dir, ckpt_identity, progress,
                                       cfg.batch_size * cfg.gradient_accumulation_steps, has_val)
    extra: dict[str, Any] = dict(
        lr_scheduler_type=scheduler_name(cfg),
        warmup_steps=warmup_steps(cfg),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        seed=cfg.seed,
        logging_steps=log_every_of(cfg),
        disable_tqdm=True,
        save_strategy="no",
        load_best_model_at_end=False,
        max_grad_norm=1.0,
        dataloader_pin_memory=device_info.device == "cuda",
    )
    if has_val:
        extra.update(eval_strategy="steps", eval_steps=cfg.eval_every)
    if device_info.device == "cuda":
        extra.update(bf16=device_info.amp_dtype == torch.bfloat16, fp16=device_info.amp_dtype == torch.float16)
    if cfg.finetune_mode == "lora":
        rank = int(getattr(cfg, "lora_rank", 8))
        # upstream's default adapter (rank 8, alpha 16, these modules) at the configured rank
        extra["lora_config"] = {"r": rank, "lora_alpha": 2 * rank, "target_modules": [
            "self_attention.q", "self_attention.v", "self_attention.k", "self_attention.o",
            "output_patch_embedding.output_layer"]}
    output_dir.mkdir(parents=True, exist_ok=True)
    fitted = pipeline.fit(
        inputs=[torch.from_numpy(a) for a in data.train],
        prediction_length=horizon,
        validation_inputs=[torch.from_numpy(a) for a in data.val] if has_val else None,
        finetune_mode=cfg.finetune_mode,
        context_length=cfg.context_length,
        learning_rate=cfg.learning_rate,
        num_steps=cfg.max_steps,
        batch_size=cfg.batch_size,
        output_dir=output_dir,
        min_past=data.min_past,
        callbacks=[callback],
        remove_printer_callback=True,
        **extra,
    )
    model = fitted.model
    if hasattr(model, "merge_and_unload"):  # LoRA: fold the adapter into the base weights
        model = model.merge_and_unload()
        fitted = Chronos2Pipeline(model=model)
    fitted.model.eval()
    return fitted, state
