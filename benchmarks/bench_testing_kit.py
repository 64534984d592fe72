"""How long minires.testing takes per layer, at its default example counts.

    python -m benchmarks.bench_testing_kit [--repeats 3]

Times ``check_module`` (all eight contract checks, 10 hypothesis examples)
and ``check_against_torch`` (float32 and float64, 10 examples) on every layer
and block of tests/nn/kit_cases.py -- the cases minires's own suite runs --
and reports the median of ``--repeats`` runs.  The numbers say what a user's
property test costs, so they are absolute seconds on this machine, not
ratios: there is no torch equivalent of the kit to compare with.  Writes
benchmarks/results/testing_kit.json and .md.
"""
import argparse
import os
import statistics
import sys
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks.machine import machine_info, write_results  # noqa: E402


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--name", default="testing_kit", help="results file stem")
    args = p.parse_args(argv)
    from hypothesis import settings
    from minires.testing import check_against_torch, check_module
    from minires.testing.runner import DEFAULT_EXAMPLES
    from tests.nn.kit_cases import LAYERS

    # no example database: each repeat draws afresh instead of replaying
    quiet = settings(max_examples=DEFAULT_EXAMPLES, deadline=None, database=None)
    machine = machine_info()
    rows = []
    warnings.simplefilter("ignore")  # torch's note on padding="same" with even kernels
    for name, (factory, twin, inputs) in LAYERS.items():
        row = {"layer": name,
               "check_module_s": timed(lambda: check_module(factory, inputs, settings=quiet),
                                       args.repeats)}
        if twin is not None:
            row["check_against_torch_s"] = timed(
                lambda: check_against_torch(factory, twin, inputs, settings=quiet), args.repeats)
        rows.append(row)
        print(row, flush=True)
    total = sum(r["check_module_s"] for r in rows)
    md = ["# minires.testing: seconds per layer at the default 10 examples", "",
          f"`python -m benchmarks.bench_testing_kit --repeats {args.repeats}`: medians of "
          f"{args.repeats} runs, on the cases of `tests/nn/kit_cases.py`. `check_module` runs "
          "all eight contract checks (two of them full gradchecks) per example.", "",
          "| layer | check_module (s) | check_against_torch (s) |", "|---|---:|---:|"]
    for r in rows:
        t = r.get("check_against_torch_s")
        md.append(f"| {r['layer']} | {r['check_module_s']:.2f} | "
                  f"{'-' if t is None else f'{t:.2f}'} |")
    md += ["", f"All {len(rows)} layers: {total:.1f} s of check_module."]
    paths = write_results(args.name, rows, "\n".join(md), machine)
    print("\n".join(md))
    print("wrote", *paths)


if __name__ == "__main__":
    main()
