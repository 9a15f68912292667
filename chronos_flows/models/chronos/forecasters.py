"""Chronos forecasters: Chronos-2, Chronos-Bolt and the original T5 Chronos behind the Forecaster interface.

One class per family, as chronos-forecasting puts each pipeline behind ``BaseChronosPipeline``:
:class:`ChronosForecaster` holds what they share (model source, validation, checkpoint identity,
forecast frames, metadata, save/load); :class:`Chronos2Forecaster` (upstream ``fit``),
:class:`ChronosBoltForecaster` and :class:`ChronosT5Forecaster` (Hugging Face ``Trainer``) override the training
routine, the predict call and the module saved. ``ChronosForecaster(cfg, ...)`` returns the class of
``cfg.family``; ``ChronosForecaster.load(path, cfg)`` the class of the saved model.

Typical use (the training flow)::

    fc = ChronosForecaster(cfg.chronos, workdir=run_dir, checkpoint_dir=run_dir / "checkpoints", progress=cb)
    fitted = fc.fit(train_frame, freq="W-MON", horizon=13)      # resumes from checkpoints if present
    forecast = fitted.predict(context_frame, 13, "W-MON")
    metadata = fitted.save(run_dir / "models" / "chronos")       # save_pretrained + model_metadata.json

The saved directory loads with ``chronos.BaseChronosPipeline.from_pretrained(path)`` alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from chronos_flows.models.chronos.fit_chronos2 import train_chronos2
from chronos_flows.models.chronos.configs import build_random_pipeline, resolve_model_source, select_device
from chronos_flows.models.chronos.forecaster import (
    METADATA_FILE,
    ChronosForecaster,
    copy_pipeline,
    family_of_pipeline,
    validate_training_config,
)
from chronos_flows.models.chronos.trainer_loop import train_loop
from chronos_flows.core import atomic

__all__ = [
    "ChronosForecaster",
    "Chronos2Forecaster",
    "ChronosBoltForecaster",
    "ChronosT5Forecaster",
    "FORECASTER_CLASSES",
    "build_random_pipeline",
    "family_of_pipeline",
    "resolve_model_source",
    "select_device",
    "plot_loss_curve",
    "validate_training_config",
    "METADATA_FILE",
]


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
    try:
        return atomic.write_with(path, lambda tmp: fig.savefig(tmp, dpi=100), suffix=".png")
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------------- the families


class Chronos2Forecaster(ChronosForecaster):
    """Chronos-2: fine-tuned with upstream ``Chronos2Pipeline.fit`` (full or LoRA, merged before saving)."""

    family = "chronos-2"
    samples = False

    def _train(self, base, data, horizon, device, resume, identity):
        return train_chronos2(
            base, self.cfg, data, horizon, device, self.checkpoint_dir, resume, identity, self.progress,
            output_dir=self.workdir / "hf-trainer",
        )

    def _predict_quantiles(self, pipe, inputs, horizon, levels):
        import torch

        q_list, m_list = pipe.predict_quantiles(
            inputs, prediction_length=horizon, quantile_levels=levels, batch_size=max(1, self.cfg.batch_size * 8)
        )
        # each (1, horizon[, Q]): one cat, not a Python index per series
        return torch.cat(q_list).numpy(), torch.cat(m_list).numpy()

    def _finetune_mode(self) -> str:
        return self.cfg.finetune_mode


class _LoopForecaster(ChronosForecaster):
    """Bolt and T5: no upstream ``fit``; Hugging Face ``Trainer`` (:mod:`~chronos_flows.models.chronos.trainer_loop`) on a copy."""

    def _train(self, base, data, horizon, device, resume, identity):
        return train_loop(
            copy_pipeline(base), self.family, self.cfg, data, horizon, device, self.checkpoint_dir, resume, identity,
            self.progress, output_dir=self.workdir / "hf-trainer",
        )

    def _predict_quantiles(self, pipe, inputs, horizon, levels):
        q_t, m_t = pipe.predict_quantiles(inputs, prediction_length=horizon, quantile_levels=levels)
        return q_t.numpy(), m_t.numpy()


class ChronosBoltForecaster(_LoopForecaster):
    """Chronos-Bolt: direct multi-step quantile forecasts; trained on its own quantile loss."""

    family = "chronos-bolt"
    samples = False


class ChronosT5Forecaster(_LoopForecaster):
    """The original Chronos (T5 on tokenised values): sampled forecasts (seeded), cross-entropy training."""

    family = "chronos-t5"

    def _saved_module(self, pipe):
        return pipe.inner_model


#: the forecaster class of each family: ``ChronosForecaster(cfg)`` constructs ``FORECASTER_CLASSES[cfg.family]``
FORECASTER_CLASSES = ChronosForecaster.classes
FORECASTER_CLASSES.update({cls.family: cls for cls in (Chronos2Forecaster, ChronosBoltForecaster, ChronosT5Forecaster)})
