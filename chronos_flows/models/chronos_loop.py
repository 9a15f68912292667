"""Chronos-Bolt and T5 training: upstream has no ``fit`` for them, so a plain loop on the model's own
loss (``ChronosBoltModelForForecasting.forward(context, target).loss``; T5 cross-entropy on the
tokenizer's labels), with transformers' ``get_scheduler``, gradient accumulation, gradient clipping,
mixed precision on CUDA, validation, early stopping and the shared checkpoint format."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from chronos_flows.errors import ConfigError
from chronos_flows.models.chronos_checkpoints import (
    Checkpoint,
    cpu_state_dict,
    rng_states,
    set_rng_states,
    write_checkpoint,
)
from chronos_flows.models.chronos_data import TrainData, WindowSampler, validation_windows
from chronos_flows.models.chronos_progress import (
    RESTORE_BEST,
    Reporter,
    TrainState,
    log_every_of,
    scheduler_name,
    warmup_steps,
)

if TYPE_CHECKING:
    from chronos_flows.config import ChronosConfig
    from chronos_flows.models.chronos_configs import DeviceInfo

logger = logging.getLogger("chronos_flows.train")


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


def check_bolt_horizon(pipeline, horizon: int) -> None:
    """Bolt fine-tunes on windows of its own ``prediction_length`` at most."""
    model_pred = pipeline.model.chronos_config.prediction_length
    if horizon > model_pred:
        raise ConfigError(
            f"horizon {horizon} exceeds the Chronos-Bolt model's prediction_length {model_pred}; fine-tune with "
            f"evaluation.horizon <= {model_pred} or use mode zero-shot (which forecasts longer horizons autoregressively)"
        )


class _Loop:
    """One training run of a Bolt or T5 model: set up in ``__init__``, :meth:`restore` a checkpoint
    when resuming, then :meth:`run`."""

    def __init__(self, pipeline, family: str, cfg: ChronosConfig, data: TrainData, horizon: int,
                 device_info: DeviceInfo, checkpoint_dir: Optional[Path], ckpt_identity: dict,
                 progress: Optional[Callable[[dict], None]]):
        import torch
        from transformers import get_scheduler

        self.cfg, self.checkpoint_dir, self.ckpt_identity, self.progress = cfg, checkpoint_dir, ckpt_identity, progress
        self.device = device = device_info.device
        self.model, self.loss_fn = model_loss_fn(pipeline, family)
        self.model.to(device)
        torch.manual_seed(cfg.seed)
        self.sampler = WindowSampler(data.train, cfg.context_length, horizon, data.min_past, cfg.seed)
        self.val_ctx, self.val_tgt = validation_windows(data.val, cfg.context_length, horizon) if data.val else (None, None)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=0.0)
        self.scheduler = get_scheduler(
            scheduler_name(cfg), self.optimizer, num_warmup_steps=warmup_steps(cfg), num_training_steps=cfg.max_steps
        )
        use_scaler = device == "cuda" and device_info.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.state = TrainState()
        self.best_state: Optional[dict] = None
        amp = device_info.amp_dtype
        self.autocast = (
            (lambda: torch.autocast(device_type="cuda", dtype=amp))
            if device == "cuda" else (lambda: torch.autocast(device_type="cpu", enabled=False))
        )

    def restore(self, resume: Checkpoint) -> None:
        self.model.load_state_dict(resume.state["model"])
        self.optimizer.load_state_dict(resume.state["optimizer"])
        self.scheduler.load_state_dict(resume.state["scheduler"])
        if self.scaler is not None and resume.state.get("scaler"):
            self.scaler.load_state_dict(resume.state["scaler"])
        self.sampler.set_state(resume.state["sampler"])
        set_rng_states(resume.state["rng"])
        self.best_state = resume.state.get("best_model")
        self.state = TrainState.from_meta(resume.meta)
        logger.info("resuming from checkpoint %s at step %d/%d", resume.path, self.state.step, self.cfg.max_steps)

    def evaluate(self) -> float:
        import torch

        bs = self.cfg.batch_size
        self.model.eval()
        total, n = 0.0, 0
        with torch.no_grad(), self.autocast():
            for i in range(0, len(self.val_ctx), bs):
                c = torch.from_numpy(self.val_ctx[i : i + bs]).to(self.device)
                t = torch.from_numpy(self.val_tgt[i : i + bs]).to(self.device)
                total += float(self.loss_fn(self.model, c, t)) * len(c)
                n += len(c)
        self.model.train()
        return total / n

    def save_checkpoint(self) -> None:
        if self.checkpoint_dir is None:
            return
        st = {
            "model": cpu_state_dict(self.model), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "sampler": self.sampler.get_state(), "rng": rng_states(), "best_model": self.best_state,
        }
        write_checkpoint(Path(self.checkpoint_dir), self.state.step, {**self.ckpt_identity, **self.state.to_meta()}, st)

    def optimizer_step(self, running) -> None:
        """``gradient_accumulation_steps`` batches, clipped gradients, one optimizer and scheduler step;
        the (scaled) batch losses are added to ``running``."""
        import torch

        cfg, scaler = self.cfg, self.scaler
        accum = cfg.gradient_accumulation_steps
        for _ in range(accum):
            ctx, tgt = self.sampler.sample(cfg.batch_size)
            c = torch.from_numpy(ctx).to(self.device, non_blocking=True)
            t = torch.from_numpy(tgt).to(self.device, non_blocking=True)
            with self.autocast():
                loss = self.loss_fn(self.model, c, t) / accum
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            running += loss.detach()
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def validate(self, step: int, last: bool) -> Optional[float]:
        """The validation loss at ``step`` when one is due (best weights kept, early stopping decided)."""
        if self.val_ctx is None or not (step % self.cfg.eval_every == 0 or last):
            return None
        val_loss = self.evaluate()
        if self.state.record_validation(step, val_loss, self.cfg.early_stopping_patience):
            self.best_state = cpu_state_dict(self.model)
        return val_loss

    def run(self) -> TrainState:
        import torch

        cfg, state = self.cfg, self.state
        log_every = log_every_of(cfg)
        reporter = Reporter.resuming(state, cfg.max_steps, cfg.batch_size * cfg.gradient_accumulation_steps, self.progress)
        self.model.train()
        running = torch.zeros((), device=self.device)
        running_n = 0
        while state.step < cfg.max_steps and not state.stopped_early:
            self.optimizer_step(running)
            state.step += 1
            running_n += 1
            step = state.step
            last = step >= cfg.max_steps
            val_loss = self.validate(step, last)
            entry = None
            if step % log_every == 0 or last or val_loss is not None or state.stopped_early:
                loss_value = float(running) / max(running_n, 1)
                running.zero_()
                running_n = 0
                entry = {"step": step, "loss": loss_value, "lr": self.scheduler.get_last_lr()[0], "elapsed_s": reporter.elapsed()}
                if val_loss is not None:
                    entry["val_loss"] = val_loss
                state.history.append(entry)
            if step % cfg.checkpoint_every == 0 or last or state.stopped_early:
                self.save_checkpoint()  # before reporting: a failing progress callback must not lose it
            if entry is not None:
                reporter.report(step, entry["loss"], val_loss, entry["lr"])
        if self.best_state is not None and RESTORE_BEST:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
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
) -> tuple[Any, TrainState]:
    """Fine-tune a Bolt or T5 pipeline in place (on a copy made by the caller); returns (pipeline, state)."""
    if family == "chronos-bolt":
        check_bolt_horizon(pipeline, horizon)
    loop = _Loop(pipeline, family, cfg, data, horizon, device_info, checkpoint_dir, ckpt_identity, progress)
    if resume is not None:
        loop.restore(resume)
    return pipeline, loop.run()
