"""Whole models, minires vs torch on the CPU, in one process.

Cases:
* ``resnet18_forward``: torchvision's ResNet-18, inference forward at 224x224,
  batch 8 (eval mode, no_grad in both frameworks).
* ``resnet20_train_step``: CIFAR ResNet-20 (option A), batch 128 at 32x32:
  forward, cross-entropy loss, backward (every parameter gradient).

Both frameworks run the same weights (minires's state_dict is loaded into
the torch models, and the outputs are compared as a sanity check) with the
same number of threads (torch.set_num_threads and threadpoolctl for NumPy's
BLAS).  After warm-up runs, minires and torch alternate, so a slowdown of the
shared machine hits both alike; the tables report medians and the ratio
minires / torch of the medians.

Peak memory: each (framework, case) runs again (two steps) in a fresh
subprocess that imports only its own framework; we report the peak resident
memory at the end minus the peak right after the imports (so model weights,
activations and workspace count, the interpreter and libraries do not).  The
peak is VmHWM on Linux (see _maxrss_bytes for why not ru_maxrss), ru_maxrss
elsewhere.

    python -m benchmarks.bench_models [--repeats 5] [--threads N] [--quick]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

CASES = {
    "resnet18_forward": {"batch": 8, "size": 224,
                         "what": "ResNet-18 forward (eval, no_grad), 8x3x224x224"},
    "resnet20_train_step": {"batch": 128, "size": 32,
                            "what": "ResNet-20 forward + loss + backward, 128x3x32x32"},
    "resnet56_train_step": {"batch": 128, "size": 32,
                            "what": "ResNet-56 forward + loss + backward, 128x3x32x32"},
}


# ---------------------------------------------------------------- torch references
def torch_models():
    """ResNet-18 (torchvision layout) and ResNet-20 (akamaster layout, option A)
    in torch, with the state_dict keys minires uses."""
    import torch.nn as tnn
    import torch.nn.functional as F

    class Block18(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.relu = tnn.ReLU(inplace=True)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                                 tnn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet18(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = tnn.BatchNorm2d(64)
            self.relu = tnn.ReLU(inplace=True)
            self.maxpool = tnn.MaxPool2d(3, 2, 1)
            cin = 64
            for i, c in enumerate((64, 128, 256, 512)):
                s = 1 if i == 0 else 2
                setattr(self, f"layer{i + 1}", tnn.Sequential(Block18(cin, c, s), Block18(c, c, 1)))
                cin = c
            self.avgpool = tnn.AdaptiveAvgPool2d(1)
            self.fc = tnn.Linear(512, 1000)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1))

    class Block20(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.pad = cout // 4 if (stride != 1 or cin != cout) else None

        def forward(self, x):
            out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            sc = x if self.pad is None else F.pad(x[:, :, ::2, ::2],
                                                  (0, 0, 0, 0, self.pad, self.pad))
            return F.relu(out + sc)

    class CifarResNet(tnn.Module):
        def __init__(self, blocks_per_stage):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(16)
            cin = 16
            for i, c in enumerate((16, 32, 64)):
                s = 1 if i == 0 else 2
                setattr(self, f"layer{i + 1}", tnn.Sequential(
                    Block20(cin, c, s), *[Block20(c, c, 1) for _ in range(blocks_per_stage - 1)]))
                cin = c
            self.linear = tnn.Linear(64, 10)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))

    return {"resnet18_forward": ResNet18,
            "resnet20_train_step": lambda: CifarResNet(3),
            "resnet56_train_step": lambda: CifarResNet(9)}


# ---------------------------------------------------------------- one step per framework
def make_minires_step(case):
    import numpy as np
    import minires
    from minires.models import resnet18, resnet20, resnet56
    spec = CASES[case]
    minires.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((spec["batch"], 3, spec["size"], spec["size"])).astype(np.float32)
    if case == "resnet18_forward":
        model = resnet18().eval()

        def step():
            with minires.no_grad():
                return model(x)
        return model, x, None, step
    model = (resnet56() if case == "resnet56_train_step" else resnet20()).train()
    crit = minires.nn.CrossEntropyLoss()
    target = rng.integers(0, 10, spec["batch"])

    def step():
        model.zero_grad()
        loss = crit(model(x), target)
        model.backward(crit.backward())
        return loss
    return model, x, target, step


def make_torch_step(case, state_dict=None, x=None, target=None):
    import numpy as np
    import torch
    spec = CASES[case]
    model = torch_models()[case]()
    if state_dict is not None:  # the very same weights as minires
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()})
    if x is None:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((spec["batch"], 3, spec["size"], spec["size"])).astype(np.float32)
        target = rng.integers(0, 10, spec["batch"])
    xt = torch.from_numpy(x)
    if case == "resnet18_forward":
        model.eval()

        def step():
            with torch.no_grad():
                return model(xt)
        return step
    model.train()
    tt = torch.from_numpy(np.asarray(target)).long()
    crit = torch.nn.CrossEntropyLoss()

    def step():
        model.zero_grad(set_to_none=True)
        loss = crit(model(xt), tt)
        loss.backward()
        return loss
    step.model = model  # for an optimizer over its parameters
    return step


# ---------------------------------------------------------------- timing
def pin_threads(n):
    """n cores for each framework, each its own way: torch's intra-op threads;
    minires's batch threads, with numpy's BLAS on one thread (minires.parallel
    sets that itself).  No threadpoolctl limit here: threadpoolctl also caps
    the OpenMP pool torch's kernels run on, and a limit of 1 for numpy's BLAS
    silently ran torch on one thread too (measured: torch's "2-thread" step
    then took as long as its 1-thread one)."""
    import torch
    import minires
    from minires import heap
    torch.set_num_threads(n)
    minires.set_num_threads(n)
    minires.parallel.limit_blas_threads()
    heap.keep_freed_memory()  # as the minires commands do (minires/heap.py)


def time_case(case, repeats, warmup):
    import numpy as np
    model, x, target, mr_step = make_minires_step(case)
    t_step = make_torch_step(case, model.state_dict(), x, target)
    # Sanity check only (the tests do the parity): same weights, same logits / loss.
    a, b = np.asarray(mr_step()), t_step().detach().numpy()
    max_err = float(np.max(np.abs(a - b)) / max(1e-12, float(np.max(np.abs(b)))))
    for _ in range(warmup):
        mr_step(), t_step()
    mr_times, t_times = [], []
    for _ in range(repeats):  # alternate, so machine noise hits both alike
        t0 = time.perf_counter(); mr_step(); mr_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); t_step(); t_times.append(time.perf_counter() - t0)
    mr_med, t_med = statistics.median(mr_times), statistics.median(t_times)
    return {"case": case, "what": CASES[case]["what"], "repeats": repeats,
            "minires_median_s": mr_med, "torch_median_s": t_med, "ratio": mr_med / t_med,
            "minires_times_s": mr_times, "torch_times_s": t_times,
            "relative_output_difference": max_err}


# ---------------------------------------------------------------- peak memory (child)
def _maxrss_bytes():
    """This process's peak resident memory in bytes.

    On Linux, VmHWM from /proc/self/status: getrusage's ru_maxrss would do,
    except that Linux carries the *parent's* peak over the fork + exec, so a
    child started by this (large) benchmark process would report the parent's
    peak as its baseline and show no growth at all.  VmHWM belongs to the new
    address space.  Elsewhere, ru_maxrss (bytes on macOS).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * (1 if sys.platform == "darwin" else 1024)  # Linux reports KiB


def memory_child(framework, case, threads):
    """Runs in a fresh interpreter: imports one framework, then builds and runs
    one step; prints the peak RSS growth after the imports in bytes."""
    if framework == "torch":
        import torch
        import numpy  # noqa: F401
        torch.set_num_threads(threads)
    else:
        import numpy  # noqa: F401
        import minires  # noqa: F401
        import minires.models  # noqa: F401
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(limits=threads)  # noqa: F841
    base = _maxrss_bytes()
    step = make_torch_step(case) if framework == "torch" else make_minires_step(case)[3]
    step()
    step()  # a second step: steady state (torch's grads and workspace exist now)
    print(json.dumps({"peak_minus_baseline_bytes": _maxrss_bytes() - base, "baseline_bytes": base}))


def measure_memory(framework, case, threads):
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_models", "--memory-child",
                        framework, case, "--threads", str(threads)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"memory child {framework}/{case} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report
def markdown_table(results):
    lines = ["| case | minires (s) | torch (s) | ratio minires/torch | minires peak MiB | "
             "torch peak MiB |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['what']} | {r['minires_median_s']:.3f} | {r['torch_median_s']:.3f} | "
                     f"{r['ratio']:.1f}x | {r['minires_peak_mib']:.0f} | {r['torch_peak_mib']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--no-write", action="store_true", help="print only; keep results/ as is")
    ap.add_argument("--memory-child", nargs=2, metavar=("FRAMEWORK", "CASE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        return memory_child(*args.memory_child, args.threads)

    from benchmarks.machine import write_results
    pin_threads(args.threads)
    results = []
    for case in args.cases:
        r = time_case(case, args.repeats, args.warmup)
        for fw in ("minires", "torch"):
            mem = measure_memory(fw, case, args.threads)
            r[f"{fw}_peak_mib"] = mem["peak_minus_baseline_bytes"] / 2**20
        results.append(r)
        print(f"{case}: minires {r['minires_median_s']:.3f} s, torch {r['torch_median_s']:.3f} s, "
              f"ratio {r['ratio']:.1f}x; peak MiB {r['minires_peak_mib']:.0f} vs "
              f"{r['torch_peak_mib']:.0f}", flush=True)
    table = markdown_table(results)
    print()
    print(table)
    if not args.no_write:
        notes = (f"Medians of {args.repeats} alternating runs after {args.warmup} warm-up, "
                 f"{args.threads} thread(s) for both frameworks (torch.set_num_threads, "
                 "threadpoolctl for NumPy's BLAS). Same weights and inputs in both. Peak memory: "
                 "growth of the peak resident memory (VmHWM) after the imports, in a fresh "
                 "process per framework and case (two steps). The machine is shared: "
                 "individual runs are noisy, see the JSON for every time.")
        paths = write_results("bench_models", results,
                              "# Whole models: minires vs torch (CPU)\n\n" + table + "\n\n"
                              + notes + "\n",
                              extra={"threads": args.threads, "repeats": args.repeats,
                                     "warmup": args.warmup, "notes": notes})
        print("wrote", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
