"""Chronos forecaster: Chronos-2, Chronos-Bolt and the original T5 Chronos behind the Forecaster interface.

Typical use (the training flow)::

    fc = ChronosForecaster(cfg.chronos, workdir=run_dir, checkpoint_dir=run_dir / "checkpoints", progress=cb)
    fitted = fc.fit(train_frame, freq="W-MON", horizon=13)      # resumes from checkpoints if present
    forecast = fitted.predict(context_frame, 13, "W-MON")
    metadata = fitted.save(run_dir / "models" / "chronos")       # save_pretrained + model_metadata.json

The saved directory loads with ``chronos.BaseChronosPipeline.from_pretrained(path)`` alone.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from chronos_flows.errors import ConfigError, TrainingError
from chronos_flows.models.base import DEFAULT_QUANTILES, ID, TARGET, TIME, Forecaster, future_index, quantile_column
from chronos_flows.models.chronos_configs import (
    FAMILIES,
    FAMILY_OF_PIPELINE,
    PIPELINE_CLASS,
    SIZES,
    DeviceInfo,
    build_random_pipeline,
    check_family,
    with_default_learning_rate,
    model_family_of_dir,
    resolve_model_source,
    select_device,
)
from chronos_flows.models import chronos_train as ct

__all__ = [
    "ChronosForecaster",
    "build_random_pipeline",
    "resolve_model_source",
    "select_device",
    "plot_loss_curve",
    "validate_training_config",
    "METADATA_FILE",
]

logger = logging.getLogger("chronos_flows.train")
METADATA_FILE = "model_metadata.json"


def family_of_pipeline(pipeline) -> str:
    name = type(pipeline).__name__
    if name not in FAMILY_OF_PIPELINE:
        raise ConfigError(f"unsupported Chronos pipeline class {name}")
    return FAMILY_OF_PIPELINE[name]


def validate_training_config(cfg: Any, horizon: int) -> None:
    """Checks that need no model or data; raise ConfigError naming the field and the fix."""
    check_family(cfg.family)
    if cfg.mode not in ("finetune", "zero-shot"):
        raise ConfigError(f"chronos.mode {cfg.mode!r} is not one of finetune, zero-shot")
    if horizon < 1:
        raise ConfigError(f"horizon must be at least 1, got {horizon}")
    if cfg.context_length < horizon:
        raise ConfigError(
            f"chronos.context_length ({cfg.context_length}) is shorter than the horizon ({horizon}); "
            "raise chronos.context_length or shorten evaluation.horizon"
        )
    if cfg.model is None and cfg.size not in SIZES:
        raise ConfigError(f"chronos.size {cfg.size!r} is not one of {', '.join(SIZES)}")
    if cfg.finetune_mode not in ("full", "lora"):
        raise ConfigError(f"chronos.finetune_mode {cfg.finetune_mode!r} is not one of full, lora")
    if cfg.finetune_mode == "lora" and cfg.family != "chronos-2" and cfg.mode == "finetune":
        raise ConfigError(
            f"chronos.finetune_mode 'lora' is supported for chronos-2 only (family is {cfg.family}); use finetune_mode full"
        )


def plot_loss_curve(history: Sequence[dict], path: Path, title: str = "Chronos training loss") -> Path:
    """Write the training (and validation) loss curve as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    tr = [(h["step"], h["loss"]) for h in history if h.get("loss") is not None]
    va = [(h["step"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if tr:
        ax.plot(*zip(*tr), label="train loss")
    if va:
        ax.plot(*zip(*va), "o-", label="validation loss")
    if not tr and not va:
        ax.text(0.5, 0.5, "no training (zero-shot)", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if tr or va:
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


class ChronosForecaster(Forecaster):
    """Chronos models behind the Forecaster interface (see module docstring)."""

    name = "chronos"

    def __init__(
        self,
        cfg: Any,
        *,
        workdir: Path,
        checkpoint_dir: Optional[Path] = None,
        progress: Optional[Callable[[dict], None]] = None,
        fetch_dir: Optional[Callable[[str, Path], None]] = None,
        _pipeline: Any = None,
        _info: Optional[dict] = None,
    ):
        check_family(cfg.family)
        self.cfg = with_default_learning_rate(cfg)
        self.workdir = Path(workdir)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.progress = progress
        self.fetch_dir = fetch_dir
        self._pipeline = _pipeline
        self.info: dict = dict(_info or {})
        self.training_history: list[dict] = list(self.info.get("history", []))

    # ------------------------------------------------------------------ model source

    @property
    def pipeline(self):
        if self._pipeline is None:
            raise TrainingError("no model loaded yet; call fit() (or predict(), which loads the base model)")
        return self._pipeline

    def _load_base(self, horizon: int, device: DeviceInfo):
        """The starting pipeline: pretrained (hub id / dir / s3) or a named random configuration."""
        cfg = self.cfg
        if cfg.model:
            source = resolve_model_source(cfg.model, self.workdir / "model-cache", self.fetch_dir)
            if Path(source).is_dir():
                fam = model_family_of_dir(Path(source))
                if fam is not None and fam != cfg.family:
                    raise ConfigError(
                        f"chronos.model {cfg.model} is a {fam} model but chronos.family is {cfg.family}; "
                        f"set chronos.family to {fam}"
                    )
            from chronos import BaseChronosPipeline

            try:
                pipe = BaseChronosPipeline.from_pretrained(source, device_map=device.device, dtype=torch_float32())
            except (OSError, ValueError, EnvironmentError) as exc:
                raise ConfigError(
                    f"cannot load Chronos model {cfg.model!r}: {exc}. Without internet only local directories, "
                    "s3:// URIs or models already in the Hugging Face cache work"
                ) from None
            fam = family_of_pipeline(pipe)
            if fam != cfg.family:
                raise ConfigError(f"chronos.model {cfg.model} is a {fam} model but chronos.family is {cfg.family}; set chronos.family to {fam}")
            self.info.setdefault("base_model", cfg.model)
            return pipe
        pipe = build_random_pipeline(cfg.family, cfg.size, cfg.context_length, horizon, cfg.seed)
        move_to(pipe, device.device)
        self.info.setdefault("base_model", f"random:{cfg.family}:{cfg.size}")
        return pipe

    def _ensure_pipeline(self, horizon: int):
        if self._pipeline is None:
            device = select_device(self.cfg)
            self._pipeline = self._load_base(horizon, device)
            self.info.setdefault("device", device.label)
        return self._pipeline

    # ------------------------------------------------------------------ training

    def fit(self, train: pd.DataFrame, freq: str, horizon: int) -> "ChronosForecaster":
        cfg = self.cfg
        validate_training_config(cfg, horizon)
        device = select_device(cfg)
        ids, arrays = ct.series_arrays(train)
        fingerprint = ct.data_fingerprint(train, horizon)
        info = {
            "family": cfg.family, "mode": cfg.mode, "horizon": horizon, "freq": freq, "training_data_fingerprint": fingerprint,
            "n_series": len(ids), "device": device.label,
        }
        if cfg.mode == "zero-shot":
            base = self._pipeline if self._pipeline is not None else self._load_base(horizon, device)
            info.update(base_model=self.info.get("base_model"), steps_done=0, history=[])
            logger.info("zero-shot: %s, no fine-tuning", info["base_model"])
            return self._derive(base, info)

        data = ct.split_train_val(ids, arrays, horizon)
        identity = {
            "family": cfg.family, "model": cfg.model, "size": cfg.size if not cfg.model else None,
            "finetune_mode": cfg.finetune_mode if cfg.family == "chronos-2" else "full",
            "context_length": cfg.context_length, "horizon": horizon, "batch_size": cfg.batch_size,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps, "seed": cfg.seed,
            "training_data_fingerprint": fingerprint,
        }
        resume = ct.load_latest_checkpoint(self.checkpoint_dir)
        if resume is not None:
            ct.check_checkpoint_compatible(resume, identity)
            if resume.step > cfg.max_steps:
                raise TrainingError(
                    f"checkpoint {resume.path} is at step {resume.step}, beyond chronos.max_steps {cfg.max_steps}; "
                    "raise max_steps or use a fresh checkpoint directory"
                )
        # everything above is validation: no training has started yet
        base = self._pipeline if self._pipeline is not None else self._load_base(horizon, device)
        base_model = self.info.get("base_model")
        n_params = sum(p.numel() for p in base.inner_model.parameters())
        logger.info(
            "fine-tuning %s (%s, %.2fM params) on %s: %d series, max_steps %d, batch %d×%d, lr %g%s",
            cfg.family, base_model, n_params / 1e6, device.label, len(data.train), cfg.max_steps, cfg.batch_size,
            cfg.gradient_accumulation_steps, cfg.learning_rate,
            f", resuming from step {resume.step}" if resume else "",
        )
        t0 = time.perf_counter()
        try:
            if cfg.family == "chronos-2":
                fitted, state = ct.train_chronos2(
                    base, cfg, data, horizon, device, self.checkpoint_dir, resume, identity, self.progress,
                    output_dir=self.workdir / "hf-trainer",
                )
            else:
                work = copy_pipeline(base)
                fitted, state = ct.train_loop(
                    work, cfg.family, cfg, data, horizon, device, self.checkpoint_dir, resume, identity, self.progress
                )
        except (ConfigError, TrainingError):
            raise
        except (RuntimeError, ValueError) as exc:
            raise TrainingError(f"Chronos fine-tuning failed: {type(exc).__name__}: {exc}") from exc
        wall = time.perf_counter() - t0
        steps_run = state.step - (state.resumed_from or 0)
        info.update(
            base_model=base_model, steps_done=state.step, max_steps=cfg.max_steps, resumed_from_step=state.resumed_from,
            stopped_early=state.stopped_early, best_val_loss=state.best_val, best_step=state.best_step,
            final_val_loss=state.last_val, final_train_loss=next((h["loss"] for h in reversed(state.history) if h.get("loss") is not None), None),
            history=state.history, train_seconds=wall,
            windows_per_s=(steps_run * cfg.batch_size * cfg.gradient_accumulation_steps / wall) if wall > 0 and steps_run > 0 else None,
            n_train_series=len(data.train), n_val_windows=len(data.val), params=n_params,
        )
        logger.info("fine-tuning done: step %d/%d, best val_loss %s, %.1fs", state.step, cfg.max_steps,
                    ct._fmt(state.best_val), wall)
        return self._derive(fitted, info)

    def _derive(self, pipeline, info: dict) -> "ChronosForecaster":
        merged = {**self.info, **info}
        return ChronosForecaster(
            self.cfg, workdir=self.workdir, checkpoint_dir=self.checkpoint_dir, progress=self.progress,
            fetch_dir=self.fetch_dir, _pipeline=pipeline, _info=merged,
        )

    # ------------------------------------------------------------------ forecasting

    def predict(
        self,
        context: pd.DataFrame,
        horizon: int,
        freq: str,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
    ) -> pd.DataFrame:
        ids, arrays, lasts = ct.series_blocks(context)
        return self.predict_series(ids, arrays, lasts, horizon, freq, quantiles)

    def predict_series(
        self,
        ids: Sequence[str],
        arrays: Sequence[np.ndarray],
        lasts: Sequence,
        horizon: int,
        freq: str,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
    ) -> pd.DataFrame:
        """:meth:`predict` on series already split into time-sorted arrays (``lasts``: each series'
        last timestamp), so a batch caller that split the panel once does not pay for it per chunk."""
        levels = [float(q) for q in quantiles]
        mean, q = self.predict_arrays(arrays, horizon, levels)
        # one vectorised frame (a per-series DataFrame costs more than the model on large panels);
        # future timestamps computed once per distinct last observation
        last_of = [pd.Timestamp(t) for t in lasts]
        futures = {t: future_index(t, horizon, freq).to_numpy() for t in set(last_of)}
        out = pd.DataFrame({
            ID: np.repeat(np.asarray([str(u) for u in ids], dtype=object), horizon),
            TIME: np.concatenate([futures[t] for t in last_of]),
            "mean": mean.reshape(-1).astype(float),
        })
        for j, lv in enumerate(levels):
            out[quantile_column(lv)] = q[:, :, j].reshape(-1).astype(float)
        return out

    def predict_arrays(
        self,
        arrays: Sequence[np.ndarray],
        horizon: int,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The model call alone, on series already split into time-sorted arrays: ``(mean, q)`` of
        shapes ``(series, horizon)`` and ``(series, horizon, len(quantiles))`` (levels in the given
        order), so a batch caller builds its output once instead of a frame per call."""
        import torch

        if horizon < 1:
            raise ConfigError(f"horizon must be at least 1, got {horizon}")
        pipe = self._ensure_pipeline(horizon)
        C = self.cfg.context_length
        inputs = [torch.from_numpy(np.ascontiguousarray(a[-C:], dtype=np.float32)) for a in arrays]
        levels = [float(q) for q in quantiles]
        family = family_of_pipeline(pipe)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)  # T5 samples: reproducible forecasts
            if family == "chronos-2":
                q_list, m_list = pipe.predict_quantiles(
                    inputs, prediction_length=horizon, quantile_levels=levels, batch_size=max(1, self.cfg.batch_size * 8)
                )
                # each (1, horizon[, Q]): one cat, not a Python index per series
                q = torch.cat(q_list).numpy()
                mean = torch.cat(m_list).numpy()
            else:
                q_t, m_t = pipe.predict_quantiles(inputs, prediction_length=horizon, quantile_levels=levels)
                q, mean = q_t.numpy(), m_t.numpy()
        return mean, q

    # ------------------------------------------------------------------ persistence

    def metadata(self) -> dict:
        import chronos
        import torch

        pipe = self.pipeline
        hist = self.training_history
        losses = [h["loss"] for h in hist if h.get("loss") is not None]
        return {
            "family": family_of_pipeline(pipe),
            "pipeline_class": type(pipe).__name__,
            "base_model": self.info.get("base_model"),
            "size": self.cfg.size if not self.cfg.model else None,
            "mode": self.cfg.mode,
            "params": int(sum(p.numel() for p in pipe.inner_model.parameters())),
            "training_config": self.cfg.model_dump(mode="json") if hasattr(self.cfg, "model_dump") else dict(self.cfg),
            "horizon": self.info.get("horizon"),
            "freq": self.info.get("freq"),
            "training_data_fingerprint": self.info.get("training_data_fingerprint"),
            "steps_done": self.info.get("steps_done", 0),
            "resumed_from_step": self.info.get("resumed_from_step"),
            "stopped_early": self.info.get("stopped_early", False),
            "best_val_loss": self.info.get("best_val_loss"),
            "best_step": self.info.get("best_step"),
            "metrics": {
                "final_train_loss": self.info.get("final_train_loss"),
                "final_val_loss": self.info.get("final_val_loss"),
                "best_val_loss": self.info.get("best_val_loss"),
                "windows_per_s": self.info.get("windows_per_s"),
                "train_seconds": self.info.get("train_seconds"),
            },
            "history_summary": {
                "entries": len(hist),
                "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None,
                "min_loss": min(losses) if losses else None,
            },
            "device": self.info.get("device"),
            "versions": {
                "chronos-forecasting": getattr(chronos, "__version__", None),
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
        }

    def save(self, path: Path) -> dict:
        """``save_pretrained`` into ``path`` (atomically replaced) plus ``model_metadata.json``; returns the metadata."""
        path = Path(path)
        pipe = self.pipeline
        meta = self.metadata()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
        try:
            inner = pipe.model if family_of_pipeline(pipe) in ("chronos-2", "chronos-bolt") else pipe.inner_model
            orig_device = next(inner.parameters()).device
            inner.to("cpu")
            try:
                inner.save_pretrained(tmp)
            finally:
                inner.to(orig_device)
            (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str))
            old = None
            if path.exists():
                old = path.parent / f".old-{path.name}-{uuid.uuid4().hex[:8]}"
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("saved %s model to %s", meta["family"], path)
        return meta

    @classmethod
    def load(cls, path: Path, cfg: Any, *, workdir: Optional[Path] = None) -> "ChronosForecaster":
        """Load a directory written by :meth:`save` (or any Chronos model directory)."""
        from chronos_flows.models.chronos_configs import check_model_dir

        path = Path(path)
        check_model_dir(path)
        device = select_device(cfg)
        from chronos import BaseChronosPipeline

        try:
            pipe = BaseChronosPipeline.from_pretrained(str(path), device_map=device.device, dtype=torch_float32())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load Chronos model from {path}: {exc}") from None
        info: dict = {}
        meta_file = path / METADATA_FILE
        if meta_file.is_file():
            try:
                meta = json.loads(meta_file.read_text())
            except ValueError as exc:
                raise ConfigError(f"{meta_file} is not valid JSON ({exc}); re-save the model") from None
            info = {
                "base_model": meta.get("base_model"), "steps_done": meta.get("steps_done"), "horizon": meta.get("horizon"),
                "freq": meta.get("freq"),
                # models saved before the rename called it data_fingerprint
                "training_data_fingerprint": meta.get("training_data_fingerprint", meta.get("data_fingerprint")),
                "best_val_loss": meta.get("best_val_loss"), "device": device.label,
            }
        fam = family_of_pipeline(pipe)
        if fam != cfg.family:
            cfg = cfg.model_copy(update={"family": fam})
        return cls(cfg, workdir=Path(workdir) if workdir else path.parent, _pipeline=pipe, _info=info)


# ---------------------------------------------------------------------------------------------- helpers


def torch_float32():
    import torch

    return torch.float32


def move_to(pipe, device: str) -> None:
    pipe.inner_model.to(device)


def copy_pipeline(pipe):
    """A deep copy of a Bolt/T5 pipeline, so training never mutates the base model."""
    return copy.deepcopy(pipe)
