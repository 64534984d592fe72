"""CIFAR-10 data pipeline: first decode, cached load, and loader throughput.

Run from the repository root:

    python -m benchmarks.bench_data                     # ../shared/datasets/cifar10-jpeg
    python -m benchmarks.bench_data --root PATH         # any root load_cifar10 accepts

1. First decode: train + test decoded into a fresh temporary cache (so it is
   a real decode even when the cache already exists), then the same through
   the normal cache ($MINIRES_CACHE, default ~/.cache/minires), which leaves
   it filled for later runs.
2. Cached load: median of 3 loads from the normal cache.
3. Loader: images/s for a whole training epoch (batch 128), with and without
   augmentation, with and without the prefetch thread, and with a consumer
   that is busy for a while on each batch (as a model would be), which shows
   how much of the preparation the thread hides.  Medians of a few epochs.
Writes benchmarks/results/bench_data.json and .md.
"""
import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import minires
from minires.data import BatchLoader, load_cifar10, resolve_cache_dir
from minires.data.transforms import normalize, random_crop, random_flip
from benchmarks.machine import machine_info, write_results

SHARED_JPEG = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpeg"


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _load_both(root, cache_dir):
    return {split: load_cifar10(root, split, cache_dir=cache_dir) for split in ("train", "test")}


def _epoch_seconds(loader, busy_s=0.0):
    t0 = time.perf_counter()
    for _x, _y in loader:
        if busy_s:
            time.sleep(busy_s)  # stands in for the model: sleeping releases the GIL, as BLAS does
    return time.perf_counter() - t0


def _per_batch_ms(fn, batch, repeats=50):
    fn(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=str(SHARED_JPEG) if SHARED_JPEG.is_dir() else None,
                        help="data root for load_cifar10 (default: ../shared/datasets/cifar10-jpeg)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per loader setting")
    args = parser.parse_args(argv)
    minires.manual_seed(0)
    rows = []

    with tempfile.TemporaryDirectory(prefix="minires-bench-cache-") as fresh:
        split_times = {}
        for split in ("train", "test"):
            split_times[split], _ = _timed(lambda: load_cifar10(args.root, split, cache_dir=fresh))
    for split, s in split_times.items():
        rows.append({"what": f"first decode ({split})", "seconds": s})
    rows.append({"what": "first decode (train + test)", "seconds": sum(split_times.values())})

    populate_s, _ = _timed(lambda: _load_both(args.root, None))
    rows.append({"what": f"fill the cache at {resolve_cache_dir()}", "seconds": populate_s})
    cached = [_timed(lambda: _load_both(args.root, None)) for _ in range(3)]
    rows.append({"what": "cached load (train + test)",
                 "seconds": statistics.median(t for t, _ in cached)})
    images, labels, _ = cached[0][1]["train"]

    batch = images[:args.batch_size]
    rng = np.random.default_rng(0)
    for name, fn in (("random_crop", lambda b: random_crop(b, 4, rng)),
                     ("random_flip", lambda b: random_flip(b, rng)),
                     ("normalize", normalize)):
        ms = _per_batch_ms(fn, batch)
        rows.append({"what": f"{name}, one batch of {args.batch_size}", "seconds": ms / 1e3,
                     "images_per_s": args.batch_size / (ms / 1e3)})

    # the consumer's busy time per batch: about what one batch costs to prepare
    prep_s = 1.3 * statistics.median(
        _epoch_seconds(BatchLoader(images, labels, args.batch_size, augment=True, prefetch=0))
        for _ in range(2)) / -(-len(images) // args.batch_size)
    for augment, prefetch, busy in ((False, 0, 0), (False, 2, 0), (True, 0, 0), (True, 2, 0),
                                    (True, 0, prep_s), (True, 2, prep_s)):
        loader = BatchLoader(images, labels, args.batch_size, augment=augment, prefetch=prefetch)
        s = statistics.median(_epoch_seconds(loader, busy) for _ in range(args.epochs))
        busy_txt = f", consumer busy {1e3 * busy:.1f} ms/batch" if busy else ""
        rows.append({"what": f"loader epoch, augment={augment}, prefetch={prefetch}{busy_txt}",
                     "seconds": s, "images_per_s": len(images) / s})

    lines = [f"# bench_data: CIFAR-10 pipeline ({args.root or 'default root'})", "",
             "| what | seconds | images/s |", "|---|---:|---:|"]
    for r in rows:
        ips = f"{r['images_per_s']:,.0f}" if "images_per_s" in r else ""
        lines.append(f"| {r['what']} | {r['seconds']:.4g} | {ips} |")
    lines += ["", f"Busy-consumer rows: with prefetch the epoch should take about the "
              f"consumer's time alone ({len(images) // args.batch_size + 1} batches x "
              f"{1e3 * prep_s:.1f} ms = {(len(images) // args.batch_size + 1) * prep_s:.1f} s); "
              "without it, that plus the preparation."]
    markdown = "\n".join(lines)
    print(markdown)
    write_results("bench_data", rows, markdown, machine=machine_info(),
                  extra={"root": args.root, "batch_size": args.batch_size,
                         "cpu_threads_visible": os.cpu_count()})


if __name__ == "__main__":
    main()
