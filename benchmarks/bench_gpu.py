"""GPU check: minires on CuPy against torch eager CUDA, on one NVIDIA GPU.

    PYTHONPATH=. python benchmarks/bench_gpu.py --data .device/data   # see gpu_check.sh

1. Versions found: CuPy, CUDA runtime and driver, torch, cuDNN, the GPU.
2. Train steps (forward, backward, SGD with momentum): ResNet-20 at batch 128
   (32x32) and ResNet-50 at batch 64 (224x224), minires vs torch, the same
   weights, alternating rounds, median of the rounds; time ratio minires/torch
   with TF32 off on both sides (the parity setting), and with TF32 on for torch
   as an extra column (minires keeps exact float32 either way).  minires is
   timed with its custom CUDA kernels on and off.  Peak GPU memory: CuPy's
   pool after the steps (freed before each model) against torch's
   max_memory_reserved (and max_memory_allocated).
3. A 60-second CIFAR-10 run of ResNet-20 in each, the `fast` recipe with the
   one-cycle schedule fitted to the budget.  The data is the *test* archive
   (the one carried to the GPU machine): 8,000 images to train on, the other
   2,000 held out for accuracy.

Results: benchmarks/results/bench_gpu.{json,md}.
"""
import argparse
import math
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.machine import write_results  # noqa: E402


def versions():
    import cupy
    import torch
    rt = cupy.cuda.runtime
    props = rt.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {"gpu": name, "gpu_memory_gib": round(props["totalGlobalMem"] / 2 ** 30, 1),
            "cupy": cupy.__version__, "cuda_runtime": rt.runtimeGetVersion(),
            "cuda_driver": rt.driverGetVersion(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


# ---------------------------------------------------------------- train steps
def _models(case):
    from minires.models import resnet20, resnet50
    from tests.models.torch_cifar_refs import TorchCifarResNet
    from tests.models.torch_refs import resnet as torch_resnet
    if case == "resnet20_b128":
        return resnet20(), TorchCifarResNet(20), 128, 32, 10
    return resnet50(), torch_resnet("resnet50"), 64, 224, 1000


def _sync():
    import cupy
    import torch
    cupy.cuda.Device().synchronize()
    torch.cuda.synchronize()


def bench_step(case, rounds, steps):
    import cupy
    import torch
    import minires
    from minires import kernels, nn, optim
    minires.manual_seed(0)
    mr, ref, batch, size, classes = _models(case)
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in mr.state_dict().items()})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    y = rng.integers(0, classes, batch)

    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    mr.to("cuda")
    xg, yg = minires.to_device(x, "cuda"), minires.to_device(y, "cuda")
    opt = optim.SGD(mr.parameters(), lr=0.01, momentum=0.9)
    crit = nn.CrossEntropyLoss(check_targets=False)

    def mr_step():
        loss = crit(mr(xg), yg)
        mr.backward(crit.backward())
        opt.step()
        opt.zero_grad()
        return loss

    ref.cuda().train()
    xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    topt = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9)
    tcrit = torch.nn.CrossEntropyLoss()

    def torch_step():
        loss = tcrit(ref(xt), yt)
        loss.backward()
        topt.step()
        topt.zero_grad(set_to_none=True)
        return loss

    def timed(fn, setup=None):
        if setup:
            setup()
        _sync()
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync()
        return (time.perf_counter() - t) / steps

    def tf32(on):
        torch.backends.cudnn.allow_tf32 = on
        torch.backends.cuda.matmul.allow_tf32 = on

    def mr_plain():
        with kernels.disabled():
            mr_step()

    for fn in (mr_step, mr_plain):  # warm-up: kernel compilation, pools, cuDNN autotune
        fn(), fn()
    tf32(False)
    torch_step(), torch_step()
    torch.cuda.reset_peak_memory_stats()
    t = {"minires": [], "minires_no_kernels": [], "torch": [], "torch_tf32": []}
    for _ in range(rounds):  # alternate, so drifts of the clock hit both alike
        t["minires"].append(timed(mr_step))
        t["minires_no_kernels"].append(timed(mr_plain))
        t["torch"].append(timed(torch_step, lambda: tf32(False)))
        t["torch_tf32"].append(timed(torch_step, lambda: tf32(True)))
    tf32(False)
    med = {k: statistics.median(v) for k, v in t.items()}
    row = {"case": case, "batch": batch, "image": size,
           **{f"{k}_ms": 1000 * v for k, v in med.items()},
           "ratio_tf32_off": med["minires"] / med["torch"],
           "ratio_tf32_on": med["minires"] / med["torch_tf32"],
           "ratio_no_kernels": med["minires_no_kernels"] / med["torch"],
           "minires_pool_mib": pool.total_bytes() / 2 ** 20,
           "torch_reserved_mib": torch.cuda.max_memory_reserved() / 2 ** 20,
           "torch_allocated_mib": torch.cuda.max_memory_allocated() / 2 ** 20}
    return row  # the models and buffers go with this frame; main() frees the pools


# ---------------------------------------------------------------- 60-second runs
def _split(data):
    from minires.data import load_cifar10
    images, labels = load_cifar10(data, split="test")[:2]
    idx = np.random.default_rng(0).permutation(len(labels))
    tr, te = idx[:8000], idx[8000:]
    return (images[tr], labels[tr]), (images[te], labels[te])


def run_minires(train, test, budget_s, out):
    from minires.train import TrainConfig, Trainer
    cfg = TrainConfig.from_recipe("fast", device="cuda", time_budget=budget_s / 60, epochs=100,
                                  out=out, progress=False)
    t0 = time.perf_counter()
    hist = Trainer(cfg, train, test, log=lambda *a: None).run()
    return {"framework": "minires", "wall_s": time.perf_counter() - t0,
            "epochs": len(hist), "steps": hist[-1]["step"], "test_acc": hist[-1]["test_acc"],
            "images_per_s": statistics.median(h["images_per_s"] for h in hist)}


def run_torch(train, test, budget_s):
    """The same recipe in torch: Nesterov SGD, wd 5e-4, one-cycle to 0.2 fitted
    to the budget from a probe, label smoothing 0.1, the same loader/augmentation."""
    import torch
    import torch.nn.functional as F
    from minires.data import BatchLoader, normalize
    from minires.models import resnet20
    from tests.models.torch_cifar_refs import TorchCifarResNet
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    model = TorchCifarResNet(20)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in resnet20().state_dict().items()})
    model.cuda()
    (xtr, ytr), (xte, yte) = train, test
    steps_per_epoch = math.ceil(len(ytr) / 128)
    xb = torch.from_numpy(normalize(xtr[:128])).cuda()
    yb = torch.from_numpy(ytr[:128]).cuda()
    probe = TorchCifarResNet(20).cuda()
    popt = torch.optim.SGD(probe.parameters(), lr=0.01)
    for i in range(12):
        if i == 2:
            torch.cuda.synchronize()
            t = time.perf_counter()
        popt.zero_grad()
        F.cross_entropy(probe(xb), yb).backward()
        popt.step()
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - t) / 10
    epochs = max(1, int(budget_s * 0.9 // (steps_per_epoch * step_s * 1.3)))  # loader, eval
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.25)
    loader = BatchLoader(xtr, ytr, 128, shuffle=True, augment=True)
    t0, steps = time.perf_counter(), 0
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            x, y = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(torch.from_numpy(normalize(xte[i:i + 500])).cuda()).argmax(1)
                           == torch.from_numpy(yte[i:i + 500]).cuda()).sum())
                      for i in range(0, len(yte), 500))
    wall = time.perf_counter() - t0
    return {"framework": "torch", "wall_s": wall, "epochs": epochs, "steps": steps,
            "test_acc": correct / len(yte), "images_per_s": steps * 128 / wall}


def _free_pools():
    import cupy
    import torch
    from minires.nn.functional import workspace
    workspace.clear()  # idle im2col buffers of the last model
    cupy.get_default_memory_pool().free_all_blocks()
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("MINIRES_DATA", os.path.join(ROOT, ".device", "data")),
                    help="folder holding test.tar.gz (CIFAR-10 JPEG test archive)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per CIFAR-10 run")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_gpu"))
    ap.add_argument("--skip-runs", action="store_true")
    args = ap.parse_args()
    ver = versions()
    print("versions:", ver, flush=True)
    rows = []
    for case in ("resnet20_b128", "resnet50_b64"):
        rows.append(bench_step(case, args.rounds, args.steps))
        print(rows[-1], flush=True)
        _free_pools()
    runs = []
    if not args.skip_runs:
        train, test = _split(args.data)
        runs.append(run_minires(train, test, args.budget, args.out))
        print(runs[-1], flush=True)
        runs.append(run_torch(train, test, args.budget))
        print(runs[-1], flush=True)
    lines = ["# GPU: minires on CuPy vs torch eager CUDA", "",
             f"GPU {ver['gpu']} ({ver['gpu_memory_gib']} GiB); CuPy {ver['cupy']}, CUDA runtime "
             f"{ver['cuda_runtime']}, driver {ver['cuda_driver']}; torch {ver['torch']} (CUDA "
             f"{ver['torch_cuda']}, cuDNN {ver['cudnn']}).", "",
             "## Train step (forward, backward, SGD momentum), median of alternating rounds", "",
             "| case | minires ms | torch ms (TF32 off) | ratio | torch ms (TF32 on) | ratio vs TF32 | "
             "minires ms, no custom kernels | minires pool MiB | torch reserved MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['minires_ms']:.1f} | {r['torch_ms']:.1f} | "
                     f"{r['ratio_tf32_off']:.2f} | {r['torch_tf32_ms']:.1f} | {r['ratio_tf32_on']:.2f} | "
                     f"{r['minires_no_kernels_ms']:.1f} | {r['minires_pool_mib']:.0f} | "
                     f"{r['torch_reserved_mib']:.0f} |")
    if runs:
        lines += ["", f"## {args.budget:.0f}-second CIFAR-10 run, ResNet-20, recipe `fast` "
                      "(train 8,000 / hold out 2,000 images of the test archive)", "",
                  "| framework | epochs | steps | wall s | images/s | held-out accuracy |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['framework']} | {r['epochs']} | {r['steps']} | {r['wall_s']:.0f} | "
                  f"{r['images_per_s']:.0f} | {100 * r['test_acc']:.2f}% |" for r in runs]
    md = "\n".join(lines)
    write_results("bench_gpu", rows, md, extra={"versions": ver, "runs": runs, "status": "measured"})
    print(md)


if __name__ == "__main__":
    main()
