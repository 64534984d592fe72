"""What ``--checkpoint-every`` costs: the time of a mid-epoch save of last.ckpt.

Run from the repository root:

    python -m benchmarks.bench_checkpoint

For each model a real ``Trainer`` trains a few steps on random images (so the
optimiser holds its momentum buffers), then its own mid-epoch save (the
state, the position inside the epoch, the checksum, the temp file, fsync,
the rename) is timed 7 times; the median is set against the default interval
(10 minutes).  The per-step check of whether a save is due (and whether
Ctrl-C was pressed) is timed too, against a ResNet-20 step.
Writes benchmarks/results/bench_checkpoint.json and .md.
"""
import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from minires.epoch_position import EpochPosition
from minires.interrupts import StopRequests
from minires.train import TrainConfig, Trainer
from benchmarks.machine import machine_info, write_results

REPEATS = 7
DEFAULT_INTERVAL_S = TrainConfig.checkpoint_every * 60


def _random_data(n, rng):
    return (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n))


def measure(model, folder, steps=3, batch=16):
    rng = np.random.default_rng(0)
    cfg = TrainConfig(model=model, epochs=1, batch_size=batch, lr=0.05, out=folder,
                      progress=False, max_steps=steps, checkpoint_every=0)
    trainer = Trainer(cfg, _random_data(batch * steps, rng), _random_data(batch, rng),
                      log=lambda *a: None)
    trainer.run()
    with StopRequests(announce=False) as stops:
        trainer._stops = stops
        position = EpochPosition(batch=1, epoch_rng=None, loss_sum=1.0, correct=1, seen=batch,
                                 loss_curve=[2.3], pending=[(2.3 * batch, 1, batch)])
        times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            trainer._save_position(position)
            times.append(time.perf_counter() - t0)
        trainer._checkpoint_every_s = DEFAULT_INTERVAL_S
        t0 = time.perf_counter()
        for _ in range(10000):
            trainer._votes()
        votes_us = (time.perf_counter() - t0) / 10000 * 1e6
    size = os.path.getsize(os.path.join(folder, "last.ckpt"))
    save_s = statistics.median(times)
    return {"model": model, "checkpoint_mb": round(size / 2 ** 20, 2),
            "save_ms": round(1000 * save_s, 1), "save_ms_all": [round(1000 * t, 1) for t in times],
            "percent_of_default_interval": round(100 * save_s / DEFAULT_INTERVAL_S, 4),
            "per_step_check_us": round(votes_us, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet56,resnet18")
    args = parser.parse_args()
    machine = machine_info()
    rows = []
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as folder:
            rows.append(measure(model, folder))
        print(rows[-1])
    lines = ["# The cost of `--checkpoint-every` (bench_checkpoint)", "",
             f"A real Trainer's mid-epoch save of last.ckpt (state, position, SHA-256, temp "
             f"file, fsync, rename), median of {REPEATS}; against the default interval of "
             f"{DEFAULT_INTERVAL_S / 60:g} minutes. The per-step check (is a save due? was "
             f"Ctrl-C pressed?) is one clock read.", "",
             "| model | checkpoint | save (median) | all saves (ms) | share of 10 min | "
             "per-step check |", "|---|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['checkpoint_mb']} MB | {r['save_ms']} ms | "
                     f"{', '.join(map(str, r['save_ms_all']))} | "
                     f"{r['percent_of_default_interval']:.4f}% | {r['per_step_check_us']} µs |")
    load = os.getloadavg()
    lines += ["", f"Load average (1, 5, 15 min) at the end: {load[0]:.2f}, {load[1]:.2f}, "
                  f"{load[2]:.2f}."]
    paths = write_results("bench_checkpoint", rows, "\n".join(lines), machine=machine)
    print("\n".join(lines))
    print("wrote", *paths)


if __name__ == "__main__":
    main()
