"""One framework's training step in a process of its own, timed on request.

Why a process per framework: two frameworks in one process disturb each
other (torch's OpenMP threads spin-wait after each op and steal a core from
minires's threads; allocator settings are shared), so a ratio measured in one
process is not what a user of either gets.  ``bench_speed`` starts one
worker per framework and asks them in turn, so that the machine's load
drifts over both alike:

    python -m benchmarks.step_worker FRAMEWORK CASE THREADS

reads commands on stdin, one per line, and answers each with one JSON line:
``run K`` (K steps: their wall and CPU seconds), ``info`` (the BLAS in use,
threadpoolctl's view, and the OPENBLAS_* variables this process saw),
``quit``.  The worker imports only its own framework.  Cases are those of
``bench_models.CASES``; a train step includes the loss, backward and an SGD
update (momentum 0.9, weight decay 1e-4) in both frameworks.
"""
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def build(framework, case, threads):
    """A no-argument function that runs one step of ``case`` in ``framework``."""
    from benchmarks import bench_models
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
        step = bench_models.make_torch_step(case)
        if not case.endswith("_train_step"):
            return step
        opt = torch.optim.SGD(step.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

        def train_step():
            loss = step()
            opt.step()
            return loss
        return train_step
    import minires
    from minires import heap
    minires.set_num_threads(threads)
    minires.parallel.limit_blas_threads()
    heap.keep_freed_memory()  # as the minires commands do (minires/heap.py)
    model, _, _, step = bench_models.make_minires_step(case)
    if not case.endswith("_train_step"):
        return step
    opt = minires.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def train_step():
        loss = step()
        opt.step()
        return loss
    return train_step


def blas_report():
    from threadpoolctl import threadpool_info
    keep = ("user_api", "internal_api", "version", "architecture", "num_threads", "prefix")
    return {"threadpoolctl": [{k: v for k, v in lib.items() if k in keep} for lib in threadpool_info()],
            "env": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "OMP_"))}}


def main(argv=None):
    framework, case, threads = (argv or sys.argv[1:])[:3]
    step = build(framework, case, int(threads))
    step()  # first step: allocations, lazy imports
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "info":
            print(json.dumps(blas_report()), flush=True)
            continue
        wall, cpu = [], []
        for _ in range(int(cmd[1])):
            c0, t0 = time.process_time(), time.perf_counter()
            step()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
