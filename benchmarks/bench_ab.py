"""Before and after: bench_speed's rows from two commits of this repository, taking turns.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_ab BEFORE AFTER \\
        --rounds 4 --name bench_ab_phases --title "What did the phase path change?"

Why: these machines drift by more than 10% within minutes (the same step of
the same code ran at 170 ms and at 212 ms a few minutes apart), so a
before/after figure is only fair when the two trees take turns.  Each
commit is checked out into a temporary git worktree; each round runs
``bench_speed --no-write --no-memory --forced-kernel ''`` (each framework in
its own process, as always) in both trees, the order flipping every round,
with this interpreter and its packages for both.  The table has every
round's rows; the summary, each tree's median ratio per row over the rounds.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.machine import write_results  # noqa: E402

ROW = re.compile(r"^\[(\d+) thr, [^\]]*\] (\S+): minires (\d+) ms, torch (\d+) ms, ratio ([\d.]+) "
                 r"\(CPU ([\d.]+)\)")


def run_rows(tree, args):
    """bench_speed's rows from ``tree``: [(case, threads, minires ms, torch ms, ratio, cpu ratio)]."""
    cmd = [sys.executable, "-m", "benchmarks.bench_speed", "--no-write", "--no-memory",
           "--forced-kernel", "", "--threads", args.threads, "--cases", args.cases,
           "--pairs", str(args.pairs)]
    out = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        m = ROW.match(line)
        if m:
            rows.append((m[2], int(m[1]), int(m[3]), int(m[4]), float(m[5]), float(m[6])))
    if not rows:
        raise SystemExit(f"bench_speed in {tree} printed no rows:\n{out}")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=2, help="bench_speed's pairs of processes per row")
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--cases", default="resnet20_train_step")
    ap.add_argument("--name", default="bench_ab")
    ap.add_argument("--title", default="Before and after (bench_speed rows, taking turns)")
    args = ap.parse_args(argv)
    trees, records = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for label in ("before", "after"):
                rev = getattr(args, label)
                path = os.path.join(tmp, label)
                subprocess.run(["git", "worktree", "add", "--detach", "-f", path, rev], cwd=ROOT,
                               check=True, capture_output=True)
                sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True,
                                     capture_output=True, text=True).stdout.strip()
                trees[label] = (path, sha)
            for r in range(1, args.rounds + 1):
                for label in (("before", "after") if r % 2 else ("after", "before")):
                    load = os.getloadavg()[0]
                    for row in run_rows(trees[label][0], args):
                        records.append((r, label, *row, load))
                        print(r, label, row, flush=True)
        finally:
            for path, _ in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", path], cwd=ROOT,
                               capture_output=True)
    write_results(args.name, [dict(zip(("round", "tree", "case", "threads", "minires_ms", "torch_ms",
                                        "ratio", "ratio_cpu", "load_1min"), rec)) for rec in records],
                  report(args, trees, records), extra={"before": trees["before"][1],
                                                       "after": trees["after"][1]})


def report(args, trees, records):
    name = {label: f"{label} ({sha})" for label, (_, sha) in trees.items()}
    lines = [f"# {args.title}", "",
             f"bench_speed rows (`--no-memory --forced-kernel '' --pairs {args.pairs}`: each "
             "framework in its own process, native kernel, both OPENBLAS_* variables unset) from "
             f"the tree before ({trees['before'][1]}) and after ({trees['after'][1]}), same venv, "
             f"the two taking turns for {args.rounds} rounds (benchmarks/bench_ab.py).", "",
             "| round | tree | step | threads | minires ms | torch ms | ratio | CPU-time ratio | "
             "load (1 min) |", "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r, label, case, threads, mr, t, ratio, cpu, load in records:
        lines.append(f"| {r} | {name[label]} | {case} | {threads} | {mr} | {t} | {ratio:.2f} | "
                     f"{cpu:.2f} | {load:.2f} |")
    lines += ["", "Median ratio over the rounds:", "", "| step | threads | before | after |",
              "|---|---:|---:|---:|"]
    for case, threads in sorted({(rec[2], rec[3]) for rec in records}, key=lambda k: (k[0], -k[1])):
        med = {label: statistics.median(rec[6] for rec in records
                                        if rec[1] == label and rec[2:4] == (case, threads))
               for label in ("before", "after")}
        lines.append(f"| {case} | {threads} | {med['before']:.3f} | {med['after']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
