"""The shared part of every Chronos forecaster: model source (pretrained or random), validation,
checkpoint identity and resume point, forecast frames, metadata, save and load.

The family classes (:mod:`chronos_flows.models.chronos.forecasters`) override the training routine, the predict
call and the module saved; import the forecaster from there, which registers them.
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
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from chronos_flows.config.sections import PRETRAINED_MODELS, RANDOM_INIT_NOTE
from chronos_flows.core.errors import ConfigError, TrainingError
from chronos_flows.models.base import DEFAULT_QUANTILES, ID, TIME, Forecaster, future_index, quantile_column
from chronos_flows.models.chronos.checkpoints import (
    Checkpoint,
    check_checkpoint_compatible,
    load_latest_checkpoint,
)
from chronos_flows.models.chronos.configs import (
    FAMILY_OF_PIPELINE,
    SIZES,
    DeviceInfo,
    HubUnreachable,
    build_random_pipeline,
    check_family,
    check_model_dir,
    hub_snapshot,
    model_family_of_dir,
    random_start,
    resolve_model_source,
    select_device,
    with_default_learning_rate,
)
from chronos_flows.models.chronos.data import (
    TrainData,
    data_fingerprint,
    series_arrays,
    series_blocks,
    split_train_val,
)
from chronos_flows.models.chronos.progress import TrainState, fmt

if TYPE_CHECKING:
    from chronos_flows.config.params import ChronosConfig

logger = logging.getLogger("chronos_flows.train")
METADATA_FILE = "model_metadata.json"


def family_of_pipeline(pipeline) -> str:
    name = type(pipeline).__name__
    if name not in FAMILY_OF_PIPELINE:
        raise ConfigError(f"unsupported Chronos pipeline class {name}")
    return FAMILY_OF_PIPELINE[name]


def validate_training_config(cfg: ChronosConfig, horizon: int) -> None:
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


class ChronosForecaster(Forecaster):
    """What every Chronos family shares behind the Forecaster interface (see module docstring).

    ``ChronosForecaster(cfg, ...)`` constructs the subclass of ``cfg.family``; a subclass overrides
    :meth:`_train` (the training routine), :meth:`_predict_quantiles` (the upstream predict call) and
    :meth:`_saved_module` (what ``save_pretrained`` writes)."""

    name = "chronos"
    #: the Chronos family of a subclass (``chronos.family``)
    family: str = ""
    #: whether a forecast draws random samples (Chronos-T5): its calls then run under a seeded,
    #: forked RNG so they are reproducible; Chronos-2 and Bolt forecast quantiles directly (upstream's
    #: DataLoader still draws its unused base seed from the global RNG; training seeds its own)
    samples: bool = True
    #: the class of each family (registered by :mod:`chronos_flows.models.chronos.forecasters`)
    classes: dict[str, type["ChronosForecaster"]] = {}

    def __new__(cls, cfg: Optional[ChronosConfig] = None, *args: Any, **kwargs: Any):
        if cls is ChronosForecaster and cfg is not None:
            family = check_family(cfg.family)
            if family not in ChronosForecaster.classes:
                raise ConfigError(f"no forecaster class for {family}; import it from chronos_flows.models.chronos.forecasters")
            cls = ChronosForecaster.classes[family]
        return super().__new__(cls)

    def __init__(
        self,
        cfg: ChronosConfig,
        *,
        workdir: Path,
        checkpoint_dir: Optional[Path] = None,
        progress: Optional[Callable[[dict], None]] = None,
        fetch_dir: Optional[Callable[[str, Path], None]] = None,
        _pipeline: Any = None,
        _info: Optional[dict] = None,
    ):
        check_family(cfg.family)
        if cfg.family != self.family:
            raise ConfigError(f"{type(self).__name__} is the {self.family} forecaster; chronos.family is {cfg.family}")
        #: the configuration as given (a fallback to a random start is derived from it)
        self.requested_cfg = cfg
        self.cfg = with_default_learning_rate(cfg if cfg.model else random_start(cfg))
        self.workdir = Path(workdir)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.progress = progress
        self.fetch_dir = fetch_dir
        self._pipeline = _pipeline
        self.info: dict = dict(_info or {})
        self.training_history: list[dict] = list(self.info.get("history", []))

    # ------------------------------------------------------------------ family-specific steps

    def _train(self, base, data: TrainData, horizon: int, device: DeviceInfo, resume: Optional[Checkpoint],
               identity: dict) -> tuple[Any, TrainState]:
        """Fine-tune ``base`` (never mutated) on ``data``; returns (fitted pipeline, final state)."""
        raise NotImplementedError

    def _predict_quantiles(self, pipe, inputs: list, horizon: int, levels: list[float]) -> tuple[np.ndarray, np.ndarray]:
        """``(q, mean)`` of shapes ``(series, horizon, levels)`` and ``(series, horizon)``."""
        raise NotImplementedError

    def _saved_module(self, pipe):
        """The module whose ``save_pretrained`` writes a directory ``BaseChronosPipeline`` loads."""
        return pipe.model

    def _finetune_mode(self) -> str:
        """The checkpoint identity's ``finetune_mode`` (only Chronos-2 has LoRA)."""
        return "full"

    # ------------------------------------------------------------------ model source

    @property
    def pipeline(self):
        if self._pipeline is None:
            raise TrainingError("no model loaded yet; call fit() (or predict(), which loads the base model)")
        return self._pipeline

    def _load_base(self, horizon: int, device: DeviceInfo):
        """The starting pipeline: pretrained (hub id / dir / s3) or a named random configuration.

        When the model is the family's default published checkpoint (``chronos.model`` left at its
        default) and the hub cannot be reached, the start falls back to a random model of
        ``chronos.size`` (with its small step budget) and says so once, in the log and in ``info``
        (``random_init``, ``random_init_reason``); any other model that cannot be loaded is an error."""
        cfg = self.cfg
        if cfg.model:
            try:
                pipe = self._load_pretrained(device)
            except HubUnreachable as exc:
                if cfg.model != PRETRAINED_MODELS.get(cfg.family):
                    raise ConfigError(f"cannot load Chronos model {cfg.model!r}: {exc}. Without internet only local "
                                      "directories, s3:// URIs or models already in the Hugging Face cache work") from None
                reason = (f"pretrained {cfg.model} unreachable ({exc}); fell back to a random {cfg.family} {cfg.size} "
                          f"model trained for at most {cfg.random_max_steps} steps — {RANDOM_INIT_NOTE}")
                logger.warning("chronos: %s", reason)
                self.cfg = with_default_learning_rate(random_start(self.requested_cfg))
                self.info.update(random_init=True, random_init_reason=reason, requested_model=cfg.model)
                return self._load_base(horizon, device)
            self.info.setdefault("base_model", cfg.model)
            self.info.setdefault("random_init", False)
            return pipe
        pipe = build_random_pipeline(cfg.family, cfg.size, cfg.context_length, horizon, cfg.seed)
        move_to(pipe, device.device)
        self.info.setdefault("base_model", f"random:{cfg.family}:{cfg.size}")
        self.info.setdefault("random_init", True)
        self.info.setdefault("random_init_reason", f"chronos.model is empty: a random {cfg.family} {cfg.size} model — {RANDOM_INIT_NOTE}")
        return pipe

    def _load_pretrained(self, device: DeviceInfo):
        cfg = self.cfg
        source = resolve_model_source(cfg.model, self.workdir / "model-cache", self.fetch_dir)
        if not Path(source).is_dir():
            source = hub_snapshot(source)
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
        ids, arrays = series_arrays(train)
        fingerprint = data_fingerprint(train, horizon)
        info = {
            "family": cfg.family, "mode": cfg.mode, "horizon": horizon, "freq": freq, "training_data_fingerprint": fingerprint,
            "n_series": len(ids), "device": device.label,
        }
        if cfg.mode == "zero-shot":
            base = self._pipeline if self._pipeline is not None else self._load_base(horizon, device)
            info.update(base_model=self.info.get("base_model"), steps_done=0, history=[])
            logger.info("zero-shot: %s, no fine-tuning", info["base_model"])
            return self._derive(base, info)

        data = split_train_val(ids, arrays, horizon)
        # the starting point first: a fallback to a random start changes the configuration trained
        base = self._pipeline if self._pipeline is not None else self._load_base(horizon, device)
        cfg = self.cfg
        identity = self._checkpoint_identity(horizon, fingerprint)
        resume = self._resume_point(identity)
        # everything above is validation: no training has started yet
        n_params = sum(p.numel() for p in base.inner_model.parameters())
        logger.info(
            "fine-tuning %s (%s, %.2fM params) on %s: %d series, max_steps %d, batch %d×%d, lr %g%s",
            cfg.family, self.info.get("base_model"), n_params / 1e6, device.label, len(data.train), cfg.max_steps,
            cfg.batch_size, cfg.gradient_accumulation_steps, cfg.learning_rate,
            f", resuming from step {resume.step}" if resume else "",
        )
        t0 = time.perf_counter()
        try:
            fitted, state = self._train(base, data, horizon, device, resume, identity)
        except (ConfigError, TrainingError):
            raise
        except (RuntimeError, ValueError) as exc:
            raise TrainingError(f"Chronos fine-tuning failed: {type(exc).__name__}: {exc}") from exc
        wall = time.perf_counter() - t0
        info.update(self._training_summary(state, data, wall, n_params))
        logger.info("fine-tuning done: step %d/%d, best val_loss %s, %.1fs", state.step, cfg.max_steps,
                    fmt(state.best_val), wall)
        return self._derive(fitted, info)

    def _checkpoint_identity(self, horizon: int, fingerprint: str) -> dict:
        """What a checkpoint must share with this run to be resumed."""
        cfg = self.cfg
        return {
            "family": cfg.family, "model": cfg.model, "size": cfg.size if not cfg.model else None,
            "finetune_mode": self._finetune_mode(),
            "context_length": cfg.context_length, "horizon": horizon, "batch_size": cfg.batch_size,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps, "seed": cfg.seed,
            "training_data_fingerprint": fingerprint,
        }

    def _resume_point(self, identity: dict) -> Optional[Checkpoint]:
        """The newest checkpoint of this run (checked compatible), or None to start fresh."""
        resume = load_latest_checkpoint(self.checkpoint_dir)
        if resume is not None:
            check_checkpoint_compatible(resume, identity)
            if resume.step > self.cfg.max_steps:
                raise TrainingError(
                    f"checkpoint {resume.path} is at step {resume.step}, beyond chronos.max_steps {self.cfg.max_steps}; "
                    "raise max_steps or use a fresh checkpoint directory"
                )
        return resume

    def _training_summary(self, state: TrainState, data: TrainData, wall: float, n_params: int) -> dict:
        cfg = self.cfg
        steps_run = state.step - (state.resumed_from or 0)
        return dict(
            base_model=self.info.get("base_model"), steps_done=state.step, max_steps=cfg.max_steps,
            resumed_from_step=state.resumed_from, stopped_early=state.stopped_early, best_val_loss=state.best_val,
            best_step=state.best_step, final_val_loss=state.last_val,
            final_train_loss=next((h["loss"] for h in reversed(state.history) if h.get("loss") is not None), None),
            history=state.history, train_seconds=wall,
            windows_per_s=(steps_run * cfg.batch_size * cfg.gradient_accumulation_steps / wall) if wall > 0 and steps_run > 0 else None,
            n_train_series=len(data.train), n_val_windows=len(data.val), params=n_params,
        )

    def _derive(self, pipeline, info: dict) -> "ChronosForecaster":
        merged = {**self.info, **info}
        return type(self)(
            self.cfg, workdir=self.workdir, checkpoint_dir=self.checkpoint_dir, progress=self.progress,
            fetch_dir=self.fetch_dir, _pipeline=pipeline, _info=merged,
        )

    # ------------------------------------------------------------------ forecasting

    def predict(self, context: pd.DataFrame, horizon: int, freq: str,
                quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pd.DataFrame:
        ids, arrays, lasts = series_blocks(context)
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
        # inference mode, not upstream's no_grad alone: no version counters or view tracking on the
        # tensors of a forecast (measured: ~13% off an 11-series call of a tiny Chronos-2 on CPU); the
        # outputs leave as numpy, so no inference tensor reaches training
        if not self.samples:  # no randomness to seed (forking the RNG costs as much as a tiny model's step)
            with torch.inference_mode():
                q, mean = self._predict_quantiles(pipe, inputs, horizon, levels)
            return mean, q
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(self.cfg.seed)  # T5 samples: reproducible forecasts
            q, mean = self._predict_quantiles(pipe, inputs, horizon, levels)
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
            "random_init": bool(self.info.get("random_init", False)),
            "random_init_reason": self.info.get("random_init_reason"),
            "size": self.cfg.size if not self.cfg.model else None,
            "mode": self.cfg.mode,
            "params": int(sum(p.numel() for p in pipe.inner_model.parameters())),
            "training_config": self.cfg.model_dump(mode="json"),
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
            inner = self._saved_module(pipe)
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
    def load(cls, path: Path, cfg: ChronosConfig, *, workdir: Optional[Path] = None) -> "ChronosForecaster":
        """Load a directory written by :meth:`save` (or any Chronos model directory) as the forecaster
        of the saved model's family (``cfg.family`` is replaced by it)."""
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
                "random_init": bool(meta.get("random_init", str(meta.get("base_model") or "").startswith("random:"))),
            }
        fam = family_of_pipeline(pipe)
        if fam != cfg.family:
            cfg = cfg.model_copy(update={"family": fam})
        return ChronosForecaster(cfg, workdir=Path(workdir) if workdir else path.parent, _pipeline=pipe, _info=info)


# ---------------------------------------------------------------------------------------------- helpers


def torch_float32():
    import torch

    return torch.float32


def move_to(pipe, device: str) -> None:
    pipe.inner_model.to(device)


def copy_pipeline(pipe):
    """A deep copy of a Bolt/T5 pipeline, so training never mutates the base model."""
    return copy.deepcopy(pipe)
