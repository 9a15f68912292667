"""Chronos training: window sampling, atomic checkpoints, the Bolt/T5 loop and the Chronos-2 ``fit`` wrapper.

The parts live in their own modules; this one gathers their public names:

* :mod:`~chronos_flows.models.chronos_data`: per-series arrays, the training-frame fingerprint, the
  train/validation split and the window sampler.
* :mod:`~chronos_flows.models.chronos_checkpoints`: atomic ``checkpoint-<step>`` directories (Trainer's
  layout for Bolt/T5, ``training_state.pt`` for Chronos-2), resume, which checkpoints to keep.
* :mod:`~chronos_flows.models.chronos_progress`: the training state in checkpoints, early stopping,
  progress reporting, schedule settings.
* :mod:`~chronos_flows.models.chronos_loop`: Chronos-Bolt and T5 have no ``fit`` upstream: Hugging Face
  ``Trainer`` on the model's own loss (``ChronosBoltModelForForecasting.forward(context, target).loss``;
  T5 cross-entropy on the tokenizer's labels), as chronos-forecasting's training script does, with a
  callback for our history, best weights, progress and atomically renamed checkpoints.
* :mod:`~chronos_flows.models.chronos2_fit`: Chronos-2 trains with upstream ``Chronos2Pipeline.fit``
  (HF Trainer; full or LoRA); a ``TrainerCallback`` adds what ``fit`` lacks: our atomic checkpoints
  (model, optimizer, scheduler, RNG states), resume from them (restored at ``on_train_begin``), early
  stopping on validation loss with the best weights restored, progress and logging.
"""

from __future__ import annotations

from chronos_flows.models.chronos2_fit import Chronos2Hooks, fit_kwargs, make_callback, train_chronos2
from chronos_flows.models.chronos_checkpoints import (
    BEST_FILE,
    CHECKPOINT_PREFIX,
    LOOP_META_FILE,
    META_FILE,
    STATE_FILE,
    Checkpoint,
    check_checkpoint_compatible,
    checkpoint_step,
    checkpoints_to_keep,
    cpu_state_dict,
    list_checkpoints,
    load_latest_checkpoint,
    load_weights,
    publish_trainer_checkpoint,
    rng_states,
    set_rng_states,
    write_checkpoint,
)
from chronos_flows.models.chronos_data import (
    VAL_WINDOWS,
    TrainData,
    WindowSampler,
    data_fingerprint,
    series_arrays,
    series_blocks,
    split_train_val,
    validation_windows,
)
from chronos_flows.models.chronos_loop import check_bolt_horizon, make_loop_callback, train_loop, trainable
from chronos_flows.models.chronos_progress import (
    RESTORE_BEST,
    Reporter,
    TrainState,
    fmt,
    log_every_of,
    scheduler_name,
    warmup_steps,
)

__all__ = [
    "BEST_FILE", "CHECKPOINT_PREFIX", "LOOP_META_FILE", "META_FILE", "STATE_FILE", "Checkpoint",
    "check_checkpoint_compatible", "checkpoint_step", "checkpoints_to_keep", "cpu_state_dict", "list_checkpoints",
    "load_latest_checkpoint", "load_weights", "publish_trainer_checkpoint", "rng_states", "set_rng_states",
    "write_checkpoint",
    "VAL_WINDOWS", "TrainData", "WindowSampler", "data_fingerprint", "series_arrays", "series_blocks",
    "split_train_val", "validation_windows",
    "RESTORE_BEST", "Reporter", "TrainState", "fmt", "log_every_of", "scheduler_name", "warmup_steps",
    "check_bolt_horizon", "make_loop_callback", "train_loop", "trainable",
    "Chronos2Hooks", "fit_kwargs", "make_callback", "train_chronos2",
]
