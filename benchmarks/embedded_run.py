"""Benchmark: the default pipeline on the embedded default, phase by phase.

Runs ``chronos-flows run --json`` exactly as a new user would (fresh store, fresh PREFECT_HOME, so
the ephemeral Prefect server starts cold) and prints the wall time of each phase, the total, and
the share of time spent outside model fitting (Prefect, I/O, cleaning, evaluation).

    python benchmarks/embedded_run.py [--set key=value ...] [--keep DIR]

Targets (issue 2): total < 5 min on 2 cores; time outside model fitting < 15% of the total.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", default=[], help="config override passed to chronos-flows run")
    ap.add_argument("--keep", help="use this directory for the store and PREFECT_HOME and keep it")
    args = ap.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="chronos-flows-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "app.cli", "run", "--json", "--store", str(work / "store")]
    for s in args.set:
        cmd += ["--set", s]

    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        print(f"run failed with exit code {proc.returncode}", file=sys.stderr)
        return 1
    summary = json.loads(proc.stdout)
    md_path = Path(summary["artifacts"]["model_metadata"].removeprefix("file://"))
    md = json.loads(md_path.read_text())

    phases = summary["phases"]
    flow_total = phases["total"]
    chronos_fit = float(md["models"]["chronos"].get("fit_seconds") or 0.0)
    prophet_fit = float((md["models"].get("prophet") or {}).get("fit_seconds") or 0.0)
    timings = md["extra"]["timings"]
    predict = sum(v for k, v in timings.items() if k.startswith("predict_") and k != "predict_prophet")
    fitting = chronos_fit + prophet_fit + predict
    outside = wall - fitting

    print(f"run {summary['run_id']}: {summary['status']}  (store {work / 'store'})")
    print(f"{'phase':<28}{'seconds':>10}")
    print(f"{'process + Prefect start/stop':<28}{wall - flow_total:>10.1f}")
    for name, secs in phases.items():
        if name != "total":
            print(f"{name:<28}{secs:>10.1f}")
    print(f"{'total (wall)':<28}{wall:>10.1f}")
    print()
    print(f"model fitting: chronos fit {chronos_fit:.1f}s + prophet fits {prophet_fit:.1f}s + forecasting {predict:.1f}s = {fitting:.1f}s")
    prefect_start = wall - flow_total
    in_flow = flow_total - fitting
    print(f"outside model fitting: {outside:.1f}s = {100 * outside / wall:.1f}% of the total (target < 15%)")
    print(f"  of which Prefect's ephemeral server start/stop and process start: {prefect_start:.1f}s")
    print(f"  and inside the flow (I/O, cleaning, evaluation, state file, artifacts): {in_flow:.1f}s = "
          f"{100 * in_flow / flow_total:.1f}% of the flow's {flow_total:.1f}s")
    print(f"total {wall:.1f}s (target < 300s): {'OK' if wall < 300 else 'OVER'}")
    for row in summary.get("leaderboard") or []:
        print(f"  {row['model']:<16} MASE {row['mase']:.3f}  WQL {row['wql']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
