"""Benchmark the Chronos train step on shipped data (offline, random-initialised models).

Measures, in one run:

1. Training throughput (windows per second) of our train step against a bare loop written directly on
   chronos-forecasting for the same model, data and batch size, as a ratio (target >= 0.95):
   * Chronos-Bolt: ``ChronosForecaster.fit`` (Hugging Face ``Trainer`` with our window stream,
     scheduler, grad clipping, logging, callback and checkpoint bookkeeping) vs a plain
     ``model(context, target).loss`` / AdamW loop;
   * Chronos-2: ``ChronosForecaster.fit`` (upstream ``Chronos2Pipeline.fit`` + our callback) vs a
     bare ``Chronos2Pipeline.fit`` call.
   Throughput is timed between two step marks inside the run (start-up and final evaluation
   excluded); ours and bare alternate ``--repeats`` times; the headline ratio compares the best run of
   each (least disturbed by other load on a shared machine), the median ratio is printed too, and the
   same by process CPU time (windows per CPU-second) and by the fastest 10-step interval of each run
   (the least disturbed by other processes on a busy machine).
2. Accuracy (MASE, WQL) of the random-initialised model before and after fine-tuning, on the shipped
   gasoline series (last ``--horizon`` weeks held out, season 52).
3. Peak memory (process max RSS; CUDA peak allocation when on GPU).

Usage::

    python benchmarks/train.py [--family both|chronos-bolt|chronos-2] [--steps 200] [--batch 32]
                               [--repeats 3] [--finetune-steps 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from chronos_flows.config.params import ChronosConfig  # noqa: E402
from chronos_flows.evaluation.metrics import mase, wql  # noqa: E402
from chronos_flows.models.chronos.forecasters import ChronosForecaster  # noqa: E402
from chronos_flows.models.chronos.configs import build_random_pipeline, select_device  # noqa: E402

DATA = ROOT / "data" / "us_gasoline.csv"
MARK_FROM, LOG_EVERY = 20, 10


def load_gasoline() -> pd.DataFrame:
    df = pd.read_csv(DATA, parse_dates=["ds"])
    df["unique_id"] = df["unique_id"].astype(str)
    return df.sort_values(["unique_id", "ds"]).reset_index(drop=True)


class StepClock:
    """Records wall and process CPU time at step marks; windows per second of each between the first
    mark >= MARK_FROM and the last before the end."""

    def __init__(self):
        self.marks: list[tuple[int, float, float]] = []

    def __call__(self, step: int) -> None:
        self.marks.append((step, time.perf_counter(), time.process_time()))

    def rate(self, windows_per_step: int, max_steps: int) -> tuple[float, float, float]:
        """(wall, CPU, fastest-interval) windows per second: the fastest interval between two marks is
        the least disturbed by other load, so its ratio is the steadiest on a busy machine."""
        pts = [m for m in self.marks if MARK_FROM <= m[0] < max_steps]
        (s0, w0, c0), (s1, w1, c1) = pts[0], pts[-1]
        fastest = max((b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(pts, pts[1:]))
        return ((s1 - s0) * windows_per_step / (w1 - w0), (s1 - s0) * windows_per_step / (c1 - c0),
                fastest * windows_per_step)


def bench_cfg(family: str, steps: int, batch: int, context: int) -> ChronosConfig:
    return ChronosConfig(  # a random model on purpose (no weights here), trained for exactly ``steps``
        family=family, model=None, random_max_steps=steps, context_length=context, max_steps=steps, batch_size=batch,
        learning_rate=1e-3, eval_every=steps, checkpoint_every=steps, seed=0,
    )


def ours(family: str, train: pd.DataFrame, horizon: int, steps: int, batch: int, context: int,
         workdir: Path) -> tuple[float, float]:
    clock = StepClock()
    cfg = bench_cfg(family, steps, batch, context)
    fc = ChronosForecaster(cfg, workdir=workdir, checkpoint_dir=workdir / "ck", progress=lambda p: clock(p["step"]))
    fc.fit(train, "W-MON", horizon)
    return clock.rate(batch, steps)


def bare_bolt(train: pd.DataFrame, horizon: int, steps: int, batch: int, context: int) -> tuple[float, float]:
    """A bare loop directly on chronos-forecasting: sample windows, model(context, target).loss, AdamW."""
    device = select_device(bench_cfg("chronos-bolt", steps, batch, context)).device
    pipe = build_random_pipeline("chronos-bolt", "tiny", context, horizon, 0)
    model = pipe.model.to(device)
    model.train()
    series = [g["y"].to_numpy(np.float32)[:-horizon] for _, g in train.groupby("unique_id")]
    padded = [np.concatenate([np.full(context, np.nan, np.float32), s]) for s in series]
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    clock = StepClock()
    for step in range(1, steps + 1):
        ctx = np.empty((batch, context), np.float32)
        tgt = np.empty((batch, horizon), np.float32)
        for j in range(batch):
            k = int(rng.integers(len(series)))
            t = int(rng.integers(horizon, len(series[k]) - horizon + 1))
            ctx[j] = padded[k][t : t + context]
            tgt[j] = padded[k][t + context : t + context + horizon]
        loss = model(context=torch.from_numpy(ctx).to(device), target=torch.from_numpy(tgt).to(device)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % LOG_EVERY == 0:
            float(loss.detach())  # the same host sync as a logged step
            clock(step)
    return clock.rate(batch, steps)


def bare_chronos2(train: pd.DataFrame, horizon: int, steps: int, batch: int, context: int,
                  workdir: Path) -> tuple[float, float]:
    """A bare ``Chronos2Pipeline.fit`` call on the same model, data and batch size."""
    from transformers.trainer_callback import TrainerCallback

    select_device(bench_cfg("chronos-2", steps, batch, context))
    pipe = build_random_pipeline("chronos-2", "tiny", context, horizon, 0)
    clock = StepClock()

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step % LOG_EVERY == 0:
                clock(state.global_step)

    inputs = [torch.from_numpy(g["y"].to_numpy(np.float32)[:-horizon]) for _, g in train.groupby("unique_id")]
    pipe.fit(inputs, prediction_length=horizon, context_length=context, learning_rate=1e-3, num_steps=steps,
             batch_size=batch, output_dir=workdir / "bare", min_past=horizon, callbacks=[Clock()],
             remove_printer_callback=True, disable_tqdm=True, logging_steps=LOG_EVERY, seed=0)
    return clock.rate(batch, steps)


def accuracy(family: str, df: pd.DataFrame, horizon: int, steps: int, batch: int, context: int, workdir: Path) -> dict:
    last = df.groupby("unique_id")["ds"].transform("max")
    cutoff = last - pd.to_timedelta(7 * horizon, unit="D")
    train, test = df[df["ds"] <= cutoff], df[df["ds"] > cutoff]
    cfg = ChronosConfig(family=family, model=None, random_max_steps=steps, context_length=context, max_steps=steps,
                        batch_size=batch, learning_rate=1e-3, eval_every=max(10, steps // 10), checkpoint_every=steps,
                        seed=0, early_stopping_patience=None)
    base = ChronosForecaster(cfg, workdir=workdir)
    out = {}
    t0 = time.perf_counter()
    tuned = base.fit(train, "W-MON", horizon)
    fit_s = time.perf_counter() - t0
    for label, fc in (("before", base), ("after", tuned)):
        pred = fc.predict(train, horizon, "W-MON").merge(test, on=["unique_id", "ds"], how="inner")
        out[label] = {
            "mase": float(mase(pred, season_length=52, insample=train).mean()),
            "wql": float(wql(pred).mean()),
        }
    out["fit_seconds"] = fit_s
    out["steps"] = tuned.info["steps_done"]
    return out


def summarise(o: list[float], b: list[float]) -> dict:
    return {"ours": o, "bare": b, "ratio_best": max(o) / max(b), "ratio_median": statistics.median(o) / statistics.median(b)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="both", choices=["both", "chronos-bolt", "chronos-2"])
    ap.add_argument("--steps", type=int, default=200, help="steps per throughput run")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--horizon", type=int, default=13)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--finetune-steps", type=int, default=300)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name in ("transformers", "chronos", "chronos_flows"):
        logging.getLogger(name).setLevel(logging.WARNING)

    df = load_gasoline()
    families = ["chronos-bolt", "chronos-2"] if args.family == "both" else [args.family]
    dev = select_device(bench_cfg(families[0], 1, 1, args.context))
    print(f"device: {dev.label}; data: {DATA.name} ({len(df)} points); batch {args.batch}, context {args.context}, "
          f"horizon {args.horizon}, {args.steps} steps × {args.repeats} repeats (alternating)")
    results: dict = {"device": dev.label, "throughput": {}, "accuracy": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        for fam in families:
            o, b = [], []
            for r in range(args.repeats):
                wd = tmpdir / f"{fam}-{r}"
                o.append(ours(fam, df, args.horizon, args.steps, args.batch, args.context, wd))
                if fam == "chronos-bolt":
                    b.append(bare_bolt(df, args.horizon, args.steps, args.batch, args.context))
                else:
                    b.append(bare_chronos2(df, args.horizon, args.steps, args.batch, args.context, wd))
            results["throughput"][fam] = {
                "wall": summarise([x[0] for x in o], [x[0] for x in b]),
                "cpu": summarise([x[1] for x in o], [x[1] for x in b]),
                "fastest": summarise([x[2] for x in o], [x[2] for x in b]),
            }
            for kind, unit in (("wall", "windows/s"), ("cpu", "windows/CPU-s"), ("fastest", "windows/s")):
                r = results["throughput"][fam][kind]
                print(f"[throughput] {fam:12s} {kind:7s} ours {max(r['ours']):8.1f} {unit}   bare {max(r['bare']):8.1f} {unit}   "
                      f"ratio {r['ratio_best']:.3f} (best of {len(o)}; median ratio {r['ratio_median']:.3f}; "
                      f"runs ours {', '.join(f'{x:.0f}' for x in r['ours'])}; bare {', '.join(f'{x:.0f}' for x in r['bare'])})")
        for fam in families:
            acc = accuracy(fam, df, args.horizon, args.finetune_steps, args.batch, args.context, tmpdir / f"acc-{fam}")
            results["accuracy"][fam] = acc
            print(f"[accuracy]   {fam:12s} random init: MASE {acc['before']['mase']:.3f} WQL {acc['before']['wql']:.4f}  ->  "
                  f"fine-tuned {acc['steps']} steps ({acc['fit_seconds']:.1f}s): MASE {acc['after']['mase']:.3f} "
                  f"WQL {acc['after']['wql']:.4f}")
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["peak_rss_mb"] = peak_rss_mb
    line = f"[memory]     peak RSS {peak_rss_mb:.0f} MB"
    if torch.cuda.is_available():
        results["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        line += f", CUDA peak allocated {results['cuda_peak_mb']:.0f} MB"
    print(line)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
