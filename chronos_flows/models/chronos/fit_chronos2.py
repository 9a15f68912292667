"""Chronos-2 training: upstream ``Chronos2Pipeline.fit`` (HF Trainer; full or LoRA) plus a
``TrainerCallback`` for what ``fit`` lacks: our atomic checkpoints (model, optimizer, scheduler, RNG
states), resume from them (restored at ``on_train_begin``), early stopping on validation loss with the
best weights restored, progress and logging.

transformers is imported only when a callback is made (:func:`make_callback`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from chronos_flows.models.chronos.checkpoints import (
    Checkpoint,
    cpu_state_dict,
    rng_states,
    set_rng_states,
    write_checkpoint,
)
from chronos_flows.models.chronos.data import TrainData
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

#: upstream's default LoRA target modules (its adapter: rank 8, alpha 16, these modules)
LORA_TARGET_MODULES = ["self_attention.q", "self_attention.v", "self_attention.k", "self_attention.o",
                       "output_patch_embedding.output_layer"]


class Chronos2Hooks:
    """The callback's behaviour, mixed into transformers' ``TrainerCallback`` by :func:`make_callback`.

    A checkpoint of a finished run (max_steps reached or stopped early) marks the run ``finished``: the
    Trainer still takes one step before it can stop, so that step is ignored and the checkpoint's
    weights are restored at the end."""

    def __init__(self, cfg: ChronosConfig, state: TrainState, resume: Optional[Checkpoint], checkpoint_dir: Optional[Path],
                 ckpt_identity: dict, progress: Optional[Callable[[dict], None]], windows_per_step: int, has_val: bool):
        self.cfg, self.train_state, self.resume = cfg, state, resume
        self.checkpoint_dir, self.ckpt_identity, self.progress = checkpoint_dir, ckpt_identity, progress
        self.windows_per_step, self.has_val = windows_per_step, has_val
        self.reporter: Optional[Reporter] = None
        self.best_state: Optional[dict] = None
        self.pending: Optional[dict] = None  # RNG states captured at on_step_end, saved after evaluation
        self.model = self.optimizer = self.scheduler = None
        self.last_loss: Optional[float] = None
        self.finished = resume is not None and (state.step >= cfg.max_steps or state.stopped_early)

    def on_train_begin(self, args, tstate, control, model=None, optimizer=None, lr_scheduler=None, **kw):
        self.model, self.optimizer, self.scheduler = model, optimizer, lr_scheduler
        state, resume = self.train_state, self.resume
        if resume is not None:
            model.load_state_dict(resume.state["model"])
            optimizer.load_state_dict(resume.state["optimizer"])
            lr_scheduler.load_state_dict(resume.state["scheduler"])
            set_rng_states(resume.state["rng"])
            self.best_state = resume.state.get("best_model")
            tstate.global_step = state.step
            logger.info("resuming from checkpoint %s at step %d/%d", resume.path, state.step, self.cfg.max_steps)
        self.reporter = Reporter.resuming(state, self.cfg.max_steps, self.windows_per_step, self.progress)

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
            self.train_state.history.append(entry)
            if not (self.has_val and control.should_evaluate):  # on_evaluate reports this step with its val_loss
                self.reporter.report(step, self.last_loss, None, entry["lr"])

    def on_evaluate(self, args, tstate, control, metrics=None, **kw):
        val = (metrics or {}).get("eval_loss")
        if val is None or self.finished:
            return
        state, step, val = self.train_state, tstate.global_step, float(val)
        if state.history and state.history[-1]["step"] == step:
            state.history[-1]["val_loss"] = val
        else:
            state.history.append({"step": step, "loss": self.last_loss, "val_loss": val,
                                  "lr": self.scheduler.get_last_lr()[0], "elapsed_s": self.reporter.elapsed()})
        if state.record_validation(step, val, self.cfg.early_stopping_patience):
            self.best_state = cpu_state_dict(self.model)
        elif state.stopped_early:
            control.should_training_stop = True
        if self.pending is not None:  # checkpoint first: a failing progress callback must not lose it
            self._save(self.pending)
            self.pending = None
        self.reporter.report(step, self.last_loss, val, self.scheduler.get_last_lr()[0])

    def on_step_end(self, args, tstate, control, **kw):
        if self.finished:
            control.should_training_stop = True
            control.should_evaluate = control.should_save = control.should_log = False
            return
        state = self.train_state
        state.step = tstate.global_step
        if state.step % self.cfg.checkpoint_every == 0 or state.step >= self.cfg.max_steps:
            rng = rng_states()
            if self.has_val and control.should_evaluate:
                self.pending = rng  # the evaluation at this step runs next; save after it
            else:
                self._save(rng)

    def on_train_end(self, args, tstate, control, **kw):
        if self.finished:
            self.model.load_state_dict(self.resume.state["model"])
        if self.pending is not None:
            self._save(self.pending)
            self.pending = None
        if self.best_state is not None and RESTORE_BEST:
            self.model.load_state_dict(self.best_state)

    def _save(self, rng: dict) -> None:
        if self.checkpoint_dir is None:
            return
        st = {"model": cpu_state_dict(self.model), "optimizer": self.optimizer.state_dict(),
              "scheduler": self.scheduler.state_dict(), "rng": rng, "best_model": self.best_state}
        state = self.train_state
        write_checkpoint(Path(self.checkpoint_dir), state.step, {**self.ckpt_identity, **state.to_meta()}, st)


def make_callback(*args, **kwargs):
    """A ``TrainerCallback`` with :class:`Chronos2Hooks`' behaviour (same arguments)."""
    from transformers.trainer_callback import TrainerCallback

    class ChronosFlowsCallback(Chronos2Hooks, TrainerCallback):
        pass

    return ChronosFlowsCallback(*args, **kwargs)


def fit_kwargs(cfg: ChronosConfig, device_info: DeviceInfo, has_val: bool) -> dict[str, Any]:
    """The Trainer settings passed through ``Chronos2Pipeline.fit`` (schedule, logging, precision, LoRA)."""
    import torch

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
        rank = int(cfg.lora_rank)
        # upstream's default adapter (rank 8, alpha 16, these modules) at the configured rank
        extra["lora_config"] = {"r": rank, "lora_alpha": 2 * rank, "target_modules": list(LORA_TARGET_MODULES)}
    return extra


def train_chronos2(
    pipeline,
    cfg: ChronosConfig,
    data: TrainData,
    horizon: int,
    device_info: DeviceInfo,
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
    callback = make_callback(cfg, state, resume, checkpoint_dir, ckpt_identity, progress,
                             cfg.batch_size * cfg.gradient_accumulation_steps, has_val)
    extra = fit_kwargs(cfg, device_info, has_val)
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
