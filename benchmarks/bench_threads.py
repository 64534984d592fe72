"""Where minires's second core goes: the measurements behind docs/performance.md.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_threads

All on the ResNet-20 train step at batch 128 (bench_models' step with an SGD
update), medians:

1. *After a pause*: one worker process per framework (step_worker), steps
   run back to back, or each after 0.2 s idle.  minires's pool threads sleep
   between ops and must be woken; torch's OpenMP threads spin.
2. *Two processes, one thread each*: a 1-thread minires step alone, then two
   such processes at once.  If they run as fast together as alone, cores,
   caches and memory bandwidth are not what limits the 2-thread step.
3. *In one process, alternating step by step* (so both settings see the
   same machine): the fused batch norm + ReLU against ``unfused()``; the
   chunk rule (4 per core, up to 16 MiB) against the earlier 4 MiB chunks.
"""
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.bench_speed import Worker  # noqa: E402
from benchmarks.machine import write_results  # noqa: E402

CASE = "resnet20_train_step"


def _ms(values):
    return round(1e3 * statistics.median(values), 1)


def after_a_pause(rounds=3):
    out = {}
    for framework in ("minires", "torch"):
        w = Worker(framework, CASE, 2)
        w.ask("run 2")
        times = {"back to back": [], "after 0.2 s idle": []}
        for _ in range(rounds):
            times["back to back"] += w.ask("run 4")["wall"][1:]
            for _ in range(4):
                time.sleep(0.2)
                times["after 0.2 s idle"] += w.ask("run 1")["wall"]
        w.close()
        out[framework] = {k: _ms(v) for k, v in times.items()}
    return out


_ONE_THREAD = ("import sys, json, time; sys.path.insert(0, %r)\n"
               "from benchmarks.step_worker import build\n"
               "step = build('minires', %r, 1)\n"
               "[step() for _ in range(2)]\n"
               "t = []\n"
               "for _ in range(8):\n"
               "    s = time.perf_counter(); step(); t.append(time.perf_counter() - s)\n"
               "print(json.dumps(t))\n") % (ROOT, CASE)


def two_processes():
    def run(n):
        procs = [subprocess.Popen([sys.executable, "-c", _ONE_THREAD], stdout=subprocess.PIPE,
                                  text=True) for _ in range(n)]
        return [_ms(json.loads(p.communicate()[0])) for p in procs]
    return {"one process alone": run(1)[0], "two processes at once": run(2)}


_IN_PROCESS = ("import sys, json, time; sys.path.insert(0, %r)\n"
               "from benchmarks.step_worker import build\n"
               "import minires.parallel as P\n"
               "from minires.nn.norm import unfused\n"
               "step = build('minires', %r, 2)\n"
               "[step() for _ in range(2)]\n"
               "rule = (P.CHUNK_BYTES, P.MIN_CHUNKS)\n"
               "def timed():\n"
               "    step(); s = time.perf_counter(); step(); return time.perf_counter() - s\n"
               "t = {'fused': [], 'unfused': [], 'chunks now': [], 'chunks of 4 MiB': []}\n"
               "for _ in range(10):\n"
               "    t['fused'].append(timed())\n"
               "    with unfused():\n"
               "        t['unfused'].append(timed())\n"
               "    P.CHUNK_BYTES, P.MIN_CHUNKS = 4 << 20, 8\n"
               "    t['chunks of 4 MiB'].append(timed())\n"
               "    P.CHUNK_BYTES, P.MIN_CHUNKS = rule\n"
               "    t['chunks now'].append(timed())\n"
               "print(json.dumps(t))\n") % (ROOT, CASE)


def in_one_process():
    out = subprocess.run([sys.executable, "-c", _IN_PROCESS], capture_output=True, text=True,
                         check=True).stdout
    return {k: _ms(v) for k, v in json.loads(out).items()}


def main():
    load_start = list(os.getloadavg())
    results = {"after a pause (2 threads)": after_a_pause(),
               "1-thread minires step": two_processes(),
               "in one process, alternating (2 threads)": in_one_process()}
    lines = ["# Where the second core goes (ResNet-20 train step, batch 128)", ""]
    for section, rows in results.items():
        lines += [f"## {section}", "", "| setting | ms per step (median) |", "|---|---:|"]
        for k, v in rows.items():
            if isinstance(v, dict):
                lines += [f"| {k}: {kk} | {vv} |" for kk, vv in v.items()]
            else:
                lines.append(f"| {k} | {v} |")
        lines.append("")
    lines.append(f"Load average (1, 5, 15 min) at the start: {[round(v, 2) for v in load_start]}. "
                 "See benchmarks/bench_threads.py for what each row does.")
    md = "\n".join(lines)
    print(md)
    write_results("bench_threads", results, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
