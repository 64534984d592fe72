"""Inference speed: minires (as trained, and with batch norm folded), torch's
eval mode and ONNX Runtime on minires's exported graph, in images per second.

Run from the repository root (unset the OPENBLAS_* variables this machine sets
for old OpenBLAS builds, in that command alone):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_inference

Each (framework, case) runs in a process of its own (two frameworks in one
process disturb each other), on every core, forward passes only (no caches:
``minires.no_grad``, ``torch.inference_mode``).  The median of up to 20
forwards after 2 warm-ups (fewer where a forward is slow).  The ONNX file is
the one ``minires.onnx_export`` writes for the same model.
Writes benchmarks/results/bench_inference.json and .md.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

CASES = {  # name: (model, image size, batch)
    "resnet20 b1": ("resnet20", 32, 1), "resnet20 b128": ("resnet20", 32, 128),
    "resnet18@224 b1": ("resnet18", 224, 1), "resnet18@224 b32": ("resnet18", 224, 32),
}
FRAMEWORKS = ("minires", "minires folded", "torch", "onnxruntime")


def _forward(framework, case, threads, onnx_path):
    """A no-argument function: one forward of ``case`` in ``framework``."""
    import numpy as np
    name, size, batch = CASES[case]
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    if framework == "torch":
        import torch
        from benchmarks.bench_models import torch_models
        torch.set_num_threads(threads)
        model = torch_models()["resnet18_forward" if name == "resnet18" else
                               "resnet20_train_step"]().eval()
        xt = torch.from_numpy(x)

        def forward():
            with torch.inference_mode():
                return model(xt)
        return forward
    if framework == "onnxruntime":
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
        return lambda: session.run(["logits"], {"input": x})
    import minires
    from minires import heap, models
    from minires.fold import fold_batchnorm
    minires.set_num_threads(threads)
    minires.parallel.limit_blas_threads()
    heap.keep_freed_memory()
    minires.manual_seed(0)
    model = models.get(name).eval()
    if framework == "minires folded":
        model, _ = fold_batchnorm(model)

    def forward():
        with minires.no_grad():
            return model(x)
    return forward


def worker(framework, case, threads, onnx_path):
    forward = _forward(framework, case, threads, onnx_path)
    for _ in range(2):
        forward()
    times, t_end = [], time.perf_counter() + 20
    while len(times) < 20 and (len(times) < 3 or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        forward()
        times.append(time.perf_counter() - t0)
    info = {}
    if framework.startswith("minires"):
        from benchmarks.machine import _blas_info
        info["blas"] = _blas_info()
    print(json.dumps({"ms": 1000 * statistics.median(times), "n": len(times), **info}))


def export(model_name, size, folder):
    import minires
    from minires import models
    from minires.onnx_export import export_onnx
    minires.manual_seed(0)
    return export_onnx(models.get(model_name), os.path.join(folder, f"{model_name}.onnx"),
                       input_size=(3, size, size))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--worker", nargs=3, metavar=("FRAMEWORK", "CASE", "ONNX"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker[0], args.worker[1], args.threads, args.worker[2])
    from benchmarks.machine import machine_info, write_results
    machine = machine_info()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        files = {name: export(name, size, folder) for name, size, _ in CASES.values()}
        for case, (name, size, batch) in CASES.items():
            row = {"case": case, "batch": batch, "load_average": os.getloadavg()[0]}
            for fw in FRAMEWORKS:
                out = subprocess.run([sys.executable, "-m", "benchmarks.bench_inference",
                                      "--threads", str(args.threads), "--worker", fw, case,
                                      files[name]], capture_output=True, text=True, cwd=REPO)
                if out.returncode:
                    raise SystemExit(f"{fw} {case} failed:\n{out.stderr[-3000:]}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                row[fw] = {"ms": round(result["ms"], 2), "images_per_s":
                           round(1000 * batch / result["ms"], 1), "n": result["n"]}
            for fw in ("minires", "minires folded"):
                row[fw]["vs_torch"] = round(row[fw]["ms"] / row["torch"]["ms"], 2)
            rows.append(row)
            print(json.dumps(row))
    lines = ["# Inference speed (bench_inference)", "",
             f"Forward passes only, {args.threads} threads, each framework in its own process; "
             "milliseconds per forward (median) and images per second. `folded`: batch norm "
             "folded into the convolutions (`minires.fold`); ONNX Runtime runs the graph "
             "`minires.onnx_export` writes.", "",
             "| case | minires | minires folded | torch eval | ONNX Runtime | folded / torch |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [f"{r[fw]['ms']:.1f} ms ({r[fw]['images_per_s']:.0f}/s)" for fw in FRAMEWORKS]
        lines.append(f"| {r['case']} | " + " | ".join(cells) +
                     f" | {r['minires folded']['vs_torch']:.2f}x |")
    lines += ["", "Load average (1 min) before each row: " +
              ", ".join(f"{r['load_average']:.2f}" for r in rows) + "."]
    paths = write_results("bench_inference", rows, "\n".join(lines), machine=machine)
    print("\n".join(lines))
    print("wrote", *paths)


if __name__ == "__main__":
    main()
