"""Chronos-Bolt and T5 training with Hugging Face ``Trainer``, as chronos-forecasting's own training
script does (upstream has no ``fit`` for them): the model's own loss
(``ChronosBoltModelForForecasting.forward(context, target).loss``; T5 cross-entropy on the tokenizer's
labels), Trainer's AdamW, ``get_scheduler`` schedule, gradient accumulation and clipping, mixed precision
on CUDA, evaluation, ``EarlyStoppingCallback`` and checkpoints; ``trainer.train(resume_from_checkpoint=...)``
restores model, optimizer, scheduler, RNG states and step, and replays the seeded window stream up to it.

A ``TrainerCallback`` (:class:`LoopHooks`) adds what the rest of the system reads: the training
history and best validation step (:class:`~chronos_flows.models.chronos.progress.TrainState`), the best
weights restored at the end, progress events, and checkpoints renamed atomically to
``checkpoint-<8-digit step>`` with our metadata (:func:`~chronos_flows.models.chronos.checkpoints.publish_trainer_checkpoint`).

torch and transformers are imported only when training starts."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from chronos_flows.core.errors import ConfigError, TrainingError
from chronos_flows.models.chronos.checkpoints import (
    BEST_FILE,
    STATE_FILE,
    TRAINER_FILES,
    Checkpoint,
    cpu_state_dict,
    load_weights,
    publish_trainer_checkpoint,
)
from chronos_flows.models.chronos.data import TrainData, WindowSampler, validation_windows
from chronos_flows.models.chronos.progress import (
    RESTORE_BEST,
    Reporter,
    TrainState,
    log_every_of,
    scheduler_name,
    warmup_steps,
)

if TYPE_CHECKING:
    from chronos_flows.config.params import ChronosConfig
    from chronos_flows.models.chronos.configs import DeviceInfo

logger = logging.getLogger("chronos_flows.train")

#: where Trainer writes a checkpoint before it is renamed into the checkpoint directory (a hidden
#: directory there: the same file system, so the rename is atomic; ignored by readers and the store sync)
STAGING_DIR = ".trainer"


def check_bolt_horizon(pipeline, horizon: int) -> None:
    """Bolt fine-tunes on windows of its own ``prediction_length`` at most."""
    model_pred = pipeline.model.chronos_config.prediction_length
    if horizon > model_pred:
        raise ConfigError(
            f"horizon {horizon} exceeds the Chronos-Bolt model's prediction_length {model_pred}; fine-tune with "
            f"evaluation.horizon <= {model_pred} or use mode zero-shot (which forecasts longer horizons autoregressively)"
        )


# ---------------------------------------------------------------------------------------------- data


class BoltCollator:
    """(context, target) rows → the keyword arguments of ``ChronosBoltModelForForecasting.forward``."""

    label_names = ["target"]

    def __call__(self, rows: list) -> dict:
        import torch

        return {"context": torch.from_numpy(np.stack([r[0] for r in rows])),
                "target": torch.from_numpy(np.stack([r[1] for r in rows]))}


class T5Collator:
    """(context, target) rows → T5 ``input_ids``/``attention_mask``/``labels`` from the pipeline's tokenizer
    (label positions outside the target masked with -100, as the T5 loss expects)."""

    label_names = ["labels"]

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, rows: list) -> dict:
        import torch

        context = torch.from_numpy(np.stack([r[0] for r in rows]))
        target = torch.from_numpy(np.stack([r[1] for r in rows]))
        input_ids, attention_mask, scale = self.tokenizer.context_input_transform(context)
        labels, labels_mask = self.tokenizer.label_input_transform(target, scale)
        labels[labels_mask == 0] = -100
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def trainable(pipeline, family: str) -> tuple[Any, Any]:
    """(module Trainer trains, collator) of a Bolt or T5 pipeline."""
    if family == "chronos-bolt":
        return pipeline.model, BoltCollator()
    if family == "chronos-t5":
        return pipeline.inner_model, T5Collator(pipeline.tokenizer)
    raise ConfigError(f"family {family!r} has no Trainer loop (chronos-2 trains with Chronos2Pipeline.fit)")


class WindowStreamBase:
    """Endless seeded training windows, one row at a time: each batch is one ``WindowSampler.sample``
    call, which the DataLoader collates back into the same batch. Every pass restarts from the seed, so a
    resumed Trainer, which skips the batches of the steps done, continues the uninterrupted stream."""

    def __init__(self, data: TrainData, context_length: int, horizon: int, seed: int, batch_size: int):
        self.sampler = WindowSampler(data.train, context_length, horizon, data.min_past, seed)
        self.start = self.sampler.get_state()
        self.batch_size = batch_size

    def __iter__(self):
        self.sampler.set_state(self.start)
        while True:
            ctx, tgt = self.sampler.sample(self.batch_size)
            yield from zip(ctx, tgt)


def window_stream(*args):
    """A torch ``IterableDataset`` with :class:`WindowStreamBase`'s behaviour (same arguments)."""
    from torch.utils.data import IterableDataset

    class WindowStream(WindowStreamBase, IterableDataset):
        pass

    return WindowStream(*args)


# ---------------------------------------------------------------------------------------------- callback


class LoopHooks:
    """The callback's behaviour, mixed into ``TrainerCallback`` by :func:`make_loop_callback`.

    History entries are made at logged steps (every ``log_every_of(cfg)`` steps, at each evaluation and
    at the last step); a validation loss joins its step's entry. Progress is reported after the step's
    checkpoint is in place, so a failing progress callback (a killed run) cannot lose it."""

    def __init__(self, cfg: ChronosConfig, state: TrainState, resume: Optional[Checkpoint], checkpoint_dir: Optional[Path],
                 identity: dict, progress: Optional[Callable[[dict], None]], windows_per_step: int):
        self.cfg, self.train_state, self.resume = cfg, state, resume
        self.checkpoint_dir, self.identity, self.progress = checkpoint_dir, identity, progress
        self.windows_per_step = windows_per_step
        self.reporter: Optional[Reporter] = None
        self.best_state: Optional[dict] = None
        self.pending: Optional[dict] = None  # the step's history entry, reported once its checkpoint is saved
        self.model = self.early_stopping = None

    def on_train_begin(self, args, tstate, control, model=None, **kw):
        self.model, state = model, self.train_state
        if self.resume is not None and (self.resume.path / BEST_FILE).exists():
            from safetensors.torch import load_file

            self.best_state = load_file(str(self.resume.path / BEST_FILE))
        if self.early_stopping is not None:
            self.early_stopping.early_stopping_patience_counter = state.bad_evals
        self.reporter = Reporter.resuming(state, self.cfg.max_steps, self.windows_per_step, self.progress)

    def on_step_end(self, args, tstate, control, **kw):
        self.train_state.step = tstate.global_step
        if control.should_evaluate or tstate.global_step >= tstate.max_steps:
            control.should_log = True  # every validation and the last step have a history entry

    def on_log(self, args, tstate, control, logs=None, **kw):
        logs = logs or {}
        if "loss" not in logs:
            return  # evaluation metrics: on_evaluate
        entry = {"step": tstate.global_step, "loss": float(logs["loss"]),
                 "lr": float(logs.get("learning_rate", float("nan"))), "elapsed_s": self.reporter.elapsed()}
        self.train_state.history.append(entry)
        self.pending = entry
        if not (control.should_evaluate or control.should_save):
            self._report()

    def on_evaluate(self, args, tstate, control, metrics=None, **kw):
        val = (metrics or {}).get("eval_loss")
        if val is None:
            return
        state, step, val = self.train_state, tstate.global_step, float(val)
        if self.pending is None or self.pending["step"] != step:
            self.pending = {"step": step, "loss": None, "lr": None, "elapsed_s": self.reporter.elapsed()}
            state.history.append(self.pending)
        self.pending["val_loss"] = state.last_val = val
        if state.best_val is None or val < state.best_val:  # EarlyStoppingCallback's test (threshold 0)
            state.best_val, state.best_step = val, step
            self.best_state = cpu_state_dict(self.model)
        es = self.early_stopping
        state.bad_evals = es.early_stopping_patience_counter if es is not None else 0
        if control.should_training_stop and step < tstate.max_steps:
            state.stopped_early = True
            logger.info("early stopping at step %d: no validation improvement in %d evaluations (best %.4g at step %s)",
                        step, state.bad_evals, state.best_val, state.best_step)
            control.should_save = args.save_strategy != "no"  # the stopped run's checkpoint, as at max_steps
        if not control.should_save:
            self._report()

    def on_save(self, args, tstate, control, **kw):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        step = tstate.global_step
        staged = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
        meta = {**self.identity, **self.train_state.to_meta()}
        publish_trainer_checkpoint(staged, Path(self.checkpoint_dir), step, meta, self.best_state)
        self._report()

    def on_train_end(self, args, tstate, control, **kw):
        if self.best_state is not None and RESTORE_BEST:
            self.model.load_state_dict(self.best_state)

    def _report(self) -> None:
        entry, self.pending = self.pending, None
        if entry is not None:
            self.reporter.report(entry["step"], entry["loss"], entry.get("val_loss"), entry["lr"])


def make_loop_callback(*args, **kwargs):
    """A ``TrainerCallback`` with :class:`LoopHooks`' behaviour (same arguments)."""
    from transformers.trainer_callback import TrainerCallback

    class ChronosLoopCallback(LoopHooks, TrainerCallback):
        pass

    return ChronosLoopCallback(*args, **kwargs)


# ---------------------------------------------------------------------------------------------- Trainer


def training_arguments(cfg: ChronosConfig, device_info: DeviceInfo, output_dir: Path, has_val: bool, save: bool,
                       label_names: list[str]):
    """The Trainer settings of today's loop: AdamW without weight decay (the fused implementation, Trainer's default on
    this torch: 0.93 → 0.97-0.99 of the bare loop's throughput in benchmarks/train.py), clipping at 1.0, the configured
    schedule, logging/evaluation/checkpoint intervals, no reporting integrations, no progress bars."""
    import torch
    from transformers import TrainingArguments

    cuda = device_info.device == "cuda"
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate, weight_decay=0.0, optim="adamw_torch_fused", max_grad_norm=1.0,
        lr_scheduler_type=scheduler_name(cfg), warmup_steps=warmup_steps(cfg),
        logging_strategy="steps", logging_steps=log_every_of(cfg),
        eval_strategy="steps" if has_val else "no", eval_steps=cfg.eval_every if has_val else None,
        metric_for_best_model="eval_loss" if has_val else None, greater_is_better=False, load_best_model_at_end=False,
        save_strategy="steps" if save else "no", save_steps=cfg.checkpoint_every, save_total_limit=None,
        seed=cfg.seed, use_cpu=not cuda, bf16=cuda and device_info.amp_dtype == torch.bfloat16,
        fp16=cuda and device_info.amp_dtype == torch.float16,
        dataloader_num_workers=0, dataloader_pin_memory=cuda, prediction_loss_only=True, remove_unused_columns=False,
        label_names=label_names, report_to=[], disable_tqdm=True,
    )
    # one device, as configured: on a multi-GPU instance Trainer would otherwise wrap the model in
    # DataParallel over every visible GPU (multiplying the batch size)
    _ = args.n_gpu  # device setup runs (and is cached) first
    args._n_gpu = min(args._n_gpu, 1)
    return args


def build_trainer(module, collator, cfg: ChronosConfig, data: TrainData, horizon: int, device_info: DeviceInfo,
                  output_dir: Path, save: bool, callback):
    from transformers import EarlyStoppingCallback, Trainer
    from transformers.trainer_callback import PrinterCallback

    has_val = bool(data.val)
    callbacks = []
    if has_val and cfg.early_stopping_patience:
        callback.early_stopping = EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience)
        callbacks.append(callback.early_stopping)
    callbacks.append(callback)  # after early stopping: it reads that callback's decision
    eval_rows = list(zip(*validation_windows(data.val, cfg.context_length, horizon))) if has_val else None
    trainer = Trainer(
        model=module, args=training_arguments(cfg, device_info, output_dir, has_val, save, collator.label_names),
        train_dataset=window_stream(data, cfg.context_length, horizon, cfg.seed, cfg.batch_size),
        eval_dataset=eval_rows, data_collator=collator, callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    # each micro-batch's mean loss divided by the accumulation steps, as before (not a token-weighted sum)
    trainer.model_accepts_loss_kwargs = False
    return trainer


def finished_resume(module, resume: Checkpoint, state: TrainState) -> TrainState:
    """A checkpoint of a finished run (max_steps reached or stopped early): its weights (the best
    validation step's when kept), no further step."""
    best = resume.path / BEST_FILE
    load_weights(module, best if RESTORE_BEST and best.exists() else resume.path / TRAINER_FILES[0])
    logger.info("checkpoint %s is of a finished run (step %d); nothing left to train", resume.path, state.step)
    return state


def train_loop(
    pipeline,
    family: str,
    cfg: ChronosConfig,
    data: TrainData,
    horizon: int,
    device_info: DeviceInfo,
    checkpoint_dir: Optional[Path],
    resume: Optional[Checkpoint],
    ckpt_identity: dict,
    progress: Optional[Callable[[dict], None]],
    output_dir: Optional[Path] = None,
) -> tuple[Any, TrainState]:
    """Fine-tune a Bolt or T5 pipeline in place (on a copy made by the caller); returns (pipeline, state).
    Trainer writes into ``checkpoint_dir/.trainer`` (checkpoints) or ``output_dir`` (nothing, without one)."""
    if family == "chronos-bolt":
        check_bolt_horizon(pipeline, horizon)
    if resume is not None and resume.kind != "trainer":
        raise TrainingError(
            f"checkpoint {resume.path} was written by the earlier Bolt/T5 training loop ({STATE_FILE}), which the "
            "Trainer-based loop cannot resume; delete the checkpoint directory (or start a new run) to train from the start"
        )
    module, collator = trainable(pipeline, family)
    state = TrainState.from_meta(resume.meta) if resume is not None else TrainState()
    if resume is not None and (state.step >= cfg.max_steps or state.stopped_early):
        finished_resume(module, resume, state)
        module.eval()
        return pipeline, state
    staging = Path(checkpoint_dir) / STAGING_DIR if checkpoint_dir is not None else None
    out = staging or Path(output_dir or "hf-trainer")
    shutil.rmtree(out, ignore_errors=True)  # a checkpoint half-written by a killed run
    callback = make_loop_callback(cfg, state, resume, checkpoint_dir, ckpt_identity, progress,
                                  cfg.batch_size * cfg.gradient_accumulation_steps)
    trainer = build_trainer(module, collator, cfg, data, horizon, device_info, out, checkpoint_dir is not None, callback)
    if resume is not None:
        logger.info("resuming from checkpoint %s at step %d/%d", resume.path, state.step, cfg.max_steps)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bar at every checkpoint
    try:
        trainer.train(resume_from_checkpoint=str(resume.path) if resume is not None else None)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    module.eval()
    return pipeline, state
