"""The `train`, `eval` and `plot` subcommands (wired into minires.cli)."""
import json
import sys

from .recipes import RECIPES


def configure_train(p):
    p.add_argument("--recipe", choices=sorted(RECIPES), default="fast",
                   help="named preset; other flags override it (default: fast)")
    p.add_argument("--model", help="resnet20 (default), resnet32/44/56/110, plain20..., resnet18...")
    p.add_argument("--data", help="CIFAR-10 folder or archive folder (default: $MINIRES_DATA, "
                                  "else ~/.cache/minires/data)")
    p.add_argument("--download", action="store_true", help="fetch the official archive first")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int,
                   help="batch size; with --distributed the GLOBAL batch, split across the ranks")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--schedule", choices=["onecycle", "multistep", "cosine", "constant"])
    p.add_argument("--momentum", type=float)
    p.add_argument("--nesterov", action=__import__("argparse").BooleanOptionalAction, default=None)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--out", help="run folder (default runs/<model>)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.ckpt")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="fit the schedule so the run ends within this many minutes")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--train-subset", type=int, help="train on the first N images only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    d = p.add_argument_group("data-parallel training (launch with mpiexec -n N; needs the mpi extra)")
    d.add_argument("--distributed", action="store_true",
                   help="one replica per MPI rank, gradients averaged by allreduce; "
                        "only rank 0 writes the run folder")
    d.add_argument("--sync-bn", action="store_true",
                   help="batch-norm statistics over all ranks' shards (default: per replica)")
    d.add_argument("--dist-timeout", type=float, metavar="SECONDS",
                   help="abort every rank when a collective waits this long for a peer "
                        "(default 300)")


def _device_error(device):
    """A clear message when --device cuda cannot work here, else None."""
    from . import backend
    if device != "cuda" or backend.gpu_available():
        return None
    if backend.cupy_or_none() is None:
        return ("--device cuda needs CuPy: pip install 'minires[gpu]' (cupy-cuda12x; see the "
                "README for other CUDA versions)")
    return "--device cuda: CuPy is installed but sees no CUDA GPU (check nvidia-smi)"


def run_train(args):
    from .train import TrainConfig, Trainer, NonFiniteLoss
    if (args.sync_bn or args.dist_timeout is not None) and not args.distributed:
        print("minires train: error: --sync-bn and --dist-timeout need --distributed",
              file=sys.stderr)
        return 2
    err = _device_error(args.device)
    if err:
        print(f"minires train: error: {err}", file=sys.stderr)
        return 2
    if args.distributed:
        from .distributed import DistributedError, import_mpi
        try:
            import_mpi()
        except DistributedError as e:
            print(f"minires train: error: {e}", file=sys.stderr)
            return 2
    if args.download:
        from .data import download_cifar10, resolve_data_root
        download_cifar10(resolve_data_root(args.data))
    over = dict(model=args.model, data=args.data, epochs=args.epochs, batch_size=args.batch_size,
                lr=args.lr, schedule=args.schedule, momentum=args.momentum,
                nesterov=args.nesterov, weight_decay=args.weight_decay,
                label_smoothing=args.label_smoothing, warmup_epochs=args.warmup_epochs,
                device=args.device, seed=args.seed, time_budget=args.time_budget,
                max_steps=args.max_steps, train_subset=args.train_subset,
                progress=not args.no_progress, distributed=args.distributed,
                sync_bn=args.sync_bn, dist_timeout=args.dist_timeout)
    cfg = TrainConfig.from_recipe(args.recipe, **over)
    cfg.out = args.out or f"runs/{cfg.model}"
    trainer = Trainer(cfg)  # a DistributedTrainer (one per rank) with --distributed
    try:
        hist = trainer.run(resume=args.resume)
    except NonFiniteLoss as e:
        if trainer.is_main:
            print(f"minires train: {e}", file=sys.stderr)
        return 1
    if hist and trainer.is_main:
        last = hist[-1]
        print(f"done: {cfg.model}, {last['epoch']} epochs, {last['step']} steps, test accuracy "
              f"{100 * last['test_acc']:.2f}%  (run folder {cfg.out})")
    return 0


def configure_eval(p):
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run_eval(args):
    import numpy as np
    from .checkpoint import load_checkpoint
    from .data import load_cifar10
    from .train import build_model, evaluate
    err = _device_error(args.device)
    if err:
        print(f"minires eval: error: {err}", file=sys.stderr)
        return 2
    state = load_checkpoint(args.checkpoint)
    cfg = state["config"]
    model = build_model(cfg["model"])
    model.load_state_dict(state["model"])
    model.to(args.device, dtype=np.dtype(cfg.get("dtype", "float32")))
    images, labels = load_cifar10(args.data or cfg.get("data"), split=args.split)[:2]
    loss, acc = evaluate(model, images, labels, args.batch_size, args.device, cfg.get("dtype", "float32"))
    res = {"checkpoint": args.checkpoint, "model": cfg["model"], "split": args.split,
           "n": int(len(labels)), "loss": loss, "accuracy": acc, "epoch": state["epoch"]}
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{cfg['model']} ({args.checkpoint}, epoch {state['epoch']}): {args.split} "
              f"accuracy {100 * acc:.2f}%  loss {loss:.4f}  on {len(labels)} images")
    return 0


def configure_plot(p):
    p.add_argument("run_dir", metavar="RUN", help="run folder written by `minires train`")
    p.add_argument("--out", help="PNG path (default RUN/curves.png)")


def run_plot(args):
    from .plot import plot_run
    print(plot_run(args.run_dir, args.out))
    return 0
