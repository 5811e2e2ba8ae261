#!/usr/bin/env python
"""Throughput of ``edgedp batch`` on the same captures: ``--jobs 1``, ``--jobs 2`` and the Ray
backend, side by side, as ratios to ``--jobs 1``.

Synthesizes ``--captures`` small DP captures (``edgedp synth``, seeds 1..N) once, then runs each
configuration as a user does (``edgedp batch`` in a subprocess, a fresh OUT each time) and
times the whole command: start-up, Ray start-up for the Ray row, every fit, the manifest and the
gallery.  With ``--repeats R`` the configurations are run R times in turn (1, 2, ray, 1, 2, ray,
...) so a busy machine slows all of them alike, and each row reports its median.

Configurations (threads per capture = cores // jobs unless given):

* ``jobs1``: ``--jobs 1`` (one capture at a time, all cores' threads);
* ``jobs2``: ``--jobs 2`` (two worker processes, cores // 2 threads each);
* ``ray``: ``--backend ray --jobs 2`` (a local Ray instance started by the batch; one task per
  capture with ``num_cpus`` = cores // 2, so two run at a time on a machine of 2 cores).

Prints a markdown table: configuration, median wall s, captures/min, throughput ratio to jobs1,
and whether every capture's outputs are identical to jobs1's (the same thread count gives the
same bits; other counts differ by float rounding only).

    .venv/bin/python tools/bench_batch.py --captures 6 --size 97x131 --iterations 30
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def edgedp() -> str:
    exe = Path(sys.executable).with_name("edgedp")
    return str(exe) if exe.exists() else "edgedp"


CONFIGS = {
    "jobs1": ["--jobs", "1"],
    "jobs2": ["--jobs", "2"],
    "ray": ["--backend", "ray", "--jobs", "2"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captures", type=int, default=6)
    parser.add_argument("--size", default="97x131", help="capture size HxW")
    parser.add_argument("--iterations", type=int, default=30, help="stage-2 steps per capture")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench_batch")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS))
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        print(f"error: unknown configuration {unknown[0]} (choose {', '.join(CONFIGS)})", file=sys.stderr)
        return 2

    inputs = args.out / "captures"
    if inputs.exists():
        shutil.rmtree(inputs)
    for seed in range(1, args.captures + 1):
        subprocess.run([edgedp(), "synth", "-o", str(inputs / f"c{seed}"), "--size", args.size, "--seed", str(seed),
                        "--max-radius", "5"], check=True, capture_output=True)
    walls: dict[str, list[float]] = {c: [] for c in configs}
    threads: dict[str, int] = {}
    for repeat in range(args.repeats):
        for name in configs:
            out = args.out / f"{name}-{repeat}"
            if out.exists():
                shutil.rmtree(out)
            cmd = [edgedp(), "batch", str(inputs), "-o", str(out), "--preset", "fast", "--iterations", str(args.iterations),
                   *CONFIGS[name]]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(f"error: {name} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                return 1
            walls[name].append(wall)
            records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
            threads[name] = records[0]["threads"]
            print(f"# {name} run {repeat + 1}: {wall:.1f} s", file=sys.stderr, flush=True)

    def identical(name: str) -> str:
        a, b = args.out / f"{configs[0]}-0", args.out / f"{name}-0"
        same = all((a / c.name / f).read_bytes() == (b / c.name / f).read_bytes()
                   for c in sorted(inputs.iterdir()) for f in ("allinfocus.png", "defocus.npy"))
        return "yes" if same else "no (other thread count: float rounding)"

    base = statistics.median(walls[configs[0]])
    print(f"{args.captures} captures {args.size}, fast preset, {args.iterations} stage-2 steps, median of {args.repeats} run(s)")
    print(f"| configuration | threads per capture | wall s | captures/min | throughput vs {configs[0]} | outputs identical to {configs[0]} |")
    print("|---|---|---|---|---|---|")
    for name in configs:
        wall = statistics.median(walls[name])
        print(f"| {name} | {threads[name]} | {wall:.1f} | {args.captures / wall * 60:.1f} | {base / wall:.2f} | {identical(name)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
