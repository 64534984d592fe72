"""The `train`, `eval` and `plot` subcommands (wired into minires.cli).

Every flag is checked before any data is loaded or model built; a user error
is raised as a ``minires.errors.UserError`` and printed as one line."""
import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from . import train  # train.Trainer, looked up at call time (tests replace it)
from .budget import process_start
from .checkpoint import load_checkpoint
from .cmdline import add_eval_view_arguments, device_error
from .config import TrainConfig
from .convert import load_pretrained
from .data import download_cifar10, load_cifar10, resolve_data_root
from .engine import NonFiniteLoss, build_model, evaluate
from .errors import CommandError
from .fileio import atomic_write_bytes
from .inference import load_trained
from .interrupts import NAMES, Interrupted, signal_of
from .metrics import confusion_matrix, format_report, per_class
from .recipes import RECIPES

# What --resume compares with the run's saved config.json: the settings that
# change what the run computes.  --progress, --device and the MPI flags may
# change from one session of a run to the next.
RESUME_CHECKED = ("model", "data", "epochs", "batch_size", "lr", "schedule", "momentum",
                  "nesterov", "weight_decay", "label_smoothing", "warmup_epochs", "seed",
                  "time_budget", "max_steps", "train_subset", "pct_start", "anneal", "ema",
                  "tta", "eval_every", "no_decay_bn_bias", "early_crop", "early_fraction")


def configure_train(p):
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="named preset; other flags override it (default: budget with "
                        "--time-budget, else fast)")
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
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--pct-start", type=float, help="one-cycle: the fraction of steps warming up")
    p.add_argument("--anneal", choices=["cos", "linear"], help="one-cycle: how the lr anneals")
    p.add_argument("--wd-bn-bias", action=argparse.BooleanOptionalAction,
                   default=None, help="weight decay on batch-norm and bias parameters too "
                                      "(the budget recipe: --no-wd-bn-bias)")
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help="evaluate and save an exponential moving average of the weights "
                        "(e.g. 0.99; 0: none)")
    p.add_argument("--tta", choices=["none", "flip"],
                   help="test-time augmentation of every evaluation: flip averages the logits "
                        "of each image and its mirror")
    p.add_argument("--early-crop", type=int, metavar="PIXELS",
                   help="progressive resizing: train the first epochs on random PIXELSxPIXELS "
                        "windows of the images (cheaper steps; 0: off)")
    p.add_argument("--early-fraction", type=float, metavar="F",
                   help="with --early-crop: the fraction of the planned epochs on the windows "
                        "(default 0.5)")
    p.add_argument("--eval-every", type=int, metavar="N",
                   help="evaluate on the test set every N epochs (0: only at the end; the "
                        "last epoch always is)")
    p.add_argument("--out", help="run folder (default runs/<model>)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT from its last.ckpt, with its saved settings")
    p.add_argument("--resume-override", action="store_true",
                   help="with --resume: let the flags given change the run's saved settings "
                        "(recorded in OUT/resume_overrides.jsonl)")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="fit the schedule so the run ends within this many minutes")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--train-subset", type=int,
                   help="train on N images only: a class-balanced sample drawn with --seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--checkpoint-every", type=float, metavar="MINUTES",
                   help="also save last.ckpt in the middle of an epoch every MINUTES (default "
                        "10; 0: only at epoch ends), so that even kill -9 loses at most that much")
    p.add_argument("--init-from", metavar="FILE",
                   help="start from these weights instead of a random init: a .safetensors "
                        "file of `minires export` (or torch's), .npz or .pth")
    p.add_argument("--tensorboard", nargs="?", const="", default=None, metavar="DIR",
                   help="write TensorBoard event files to DIR (default: the run folder); "
                        "needs the tensorboard extra")
    d = p.add_argument_group("data-parallel training (launch with mpiexec -n N; needs the mpi extra)")
    d.add_argument("--distributed", action="store_true",
                   help="one replica per MPI rank, gradients averaged by allreduce; "
                        "only rank 0 writes the run folder")
    d.add_argument("--sync-bn", action="store_true",
                   help="batch-norm statistics over all ranks' shards (default: per replica)")
    d.add_argument("--dist-timeout", type=float, metavar="SECONDS",
                   help="abort every rank when a collective waits this long for a peer "
                        "(default 300)")


def _same_setting(name, saved, given):
    if name == "data" and saved is not None and given is not None:
        return os.path.abspath(os.path.expanduser(saved)) == os.path.abspath(os.path.expanduser(given))
    return saved == given


def _resumed_config(args, over):
    """The config of the run in --out, checked against the flags given: a
    changed setting is an error unless --resume-override, which is recorded."""
    out = args.out
    if out is None:
        raise CommandError("--resume needs --out, the run folder to continue")
    last = os.path.join(out, "last.ckpt")
    if not os.path.exists(last):
        raise CommandError(f"--resume: no checkpoint {last} to continue from; start the run "
                           f"without --resume, or give the --out folder of an existing run")
    cfg_path = os.path.join(out, "config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            saved = json.load(f)
    else:
        saved = load_checkpoint(last)["config"]
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in over.items() if v is not None and k in RESUME_CHECKED}
    if args.recipe is not None:  # a recipe given again sets all of its settings
        given = {**{k: v for k, v in RECIPES[args.recipe].items() if k in RESUME_CHECKED}, **given}
    changed = {k: (saved.get(k), v) for k, v in given.items() if not _same_setting(k, saved.get(k), v)}
    if changed and not args.resume_override:
        listed = ", ".join(f"--{k.replace('_', '-')} {new!r} (the run has {old!r})"
                           for k, (old, new) in changed.items())
        raise CommandError(f"--resume: {out} was started with other settings: {listed}; leave "
                           f"these flags out to continue it as it was, or add --resume-override "
                           f"to change them")
    cfg = TrainConfig(**{k: v for k, v in saved.items() if k in fields})
    for k, (_, new) in changed.items():
        setattr(cfg, k, new)
    for k in ("device", "progress", "checkpoint_every", "distributed", "sync_bn", "dist_timeout"):
        if over.get(k) is not None:
            setattr(cfg, k, over[k])
    cfg.out = out
    if changed:
        log = os.path.join(out, "resume_overrides.jsonl")
        before = b""
        if os.path.exists(log):
            with open(log, "rb") as f:
                before = f.read()
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "changed": {k: {"was": old, "now": new}
                                       for k, (old, new) in changed.items()}})
        atomic_write_bytes(log, before + line.encode() + b"\n")
    return cfg


def settings_from_flags(args):
    """The TrainConfig settings the flags give, by name (None: not given)."""
    given = vars(args)
    settings = {f.name: given[f.name] for f in dataclasses.fields(TrainConfig) if f.name in given}
    settings["no_decay_bn_bias"] = None if args.wd_bn_bias is None else not args.wd_bn_bias
    settings["progress"] = not args.no_progress
    return settings


def run_train(args):
    if (args.sync_bn or args.dist_timeout is not None) and not args.distributed:
        raise CommandError("--sync-bn and --dist-timeout need --distributed")
    if args.resume_override and not args.resume:
        raise CommandError("--resume-override goes with --resume")
    if args.init_from and args.resume:
        raise CommandError("--init-from starts a new run from given weights; --resume continues "
                           "a run from its own checkpoint: give one of them")
    over = settings_from_flags(args)
    if args.resume:
        cfg = _resumed_config(args, over)
    else:
        recipe = args.recipe or ("budget" if args.time_budget is not None else "fast")
        cfg = TrainConfig.from_recipe(recipe, **over)
        cfg.out = args.out or f"runs/{cfg.model}"
        if os.path.exists(os.path.join(cfg.out, "last.ckpt")):
            raise CommandError(f"--out {cfg.out} already holds a run (last.ckpt): continue it "
                               f"with --resume, or choose another --out")
    cfg.validate()
    err = device_error(cfg.device)
    if err:
        raise CommandError(err)
    rank = 0
    if args.distributed:
        from .distributed import DistributedError, import_mpi
        try:
            rank = import_mpi().COMM_WORLD.Get_rank()
        except DistributedError as e:
            raise CommandError(str(e))
    if cfg.init_from and not args.resume and (rank == 0 or os.path.exists(cfg.init_from)):
        # read once now, into a throwaway model, so that a missing file, a missing
        # extra or weights that do not fit the model are reported before any data.
        # Under MPI only rank 0 needs the file (the Trainer loads it there and
        # broadcasts the weights): another rank checks it only where it sees it
        # (one machine, a shared file system), so that a bad file stops all ranks.
        load_pretrained(build_model(cfg.model), cfg.init_from)
    callbacks = []
    if args.tensorboard is not None:  # no tensorboardX: an error before any download
        from .tensorboard import TensorBoardLogger
        callbacks.append(TensorBoardLogger(args.tensorboard or None))
    if args.download:
        download_cifar10(resolve_data_root(cfg.data))
    # with --distributed, one MPIRanks worker per rank; a budget counts from the process's start
    trainer = train.Trainer(cfg, callbacks=callbacks, started_at=process_start())
    try:
        hist = trainer.run(resume=args.resume)
    except NonFiniteLoss as e:
        if trainer.is_main:
            print(f"minires train: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted) as e:
        if isinstance(e, Interrupted) and getattr(e, "agreed", False):
            raise  # stopped between steps and saved: its message says where and how to go on
        # before the loop (loading, the probe), or a second signal while saving
        what = str(e) if isinstance(e, Interrupted) else NAMES[signal_of(e)]
        kept = (f"{trainer.last_path} holds the run as last saved" if os.path.exists(
            trainer.last_path) else "nothing was saved")
        stopped = Interrupted(signal_of(e), f"{what}; {kept}")
        stopped.quiet = not trainer.is_main
        raise stopped from None
    if hist and trainer.is_main:
        last = hist[-1]
        views = [w for w, on in (("EMA weights", cfg.ema), ("flip TTA", cfg.tta == "flip")) if on]
        how = f" ({', '.join(views)})" if views else ""
        print(f"done: {cfg.model}, {last['epoch']} epochs, {last['step']} steps, test accuracy "
              f"{100 * last['test_acc']:.2f}%{how}  (run folder {cfg.out})")
    return 0


def configure_eval(p):
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint of `minires train`, or a .safetensors file of `minires export`")
    p.add_argument("--data")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="PNG", help="also draw the confusion matrix into PNG "
                                                 "(needs the plot extra)")
    add_eval_view_arguments(p)


def run_eval(args):
    err = device_error(args.device)
    if err:
        raise CommandError(err)
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be a whole number >= 1, got {args.batch_size}")
    if args.plot:
        from .plot import require_matplotlib
        require_matplotlib()  # a missing extra is reported before any data is read
    model, info = load_trained(args.checkpoint, args.device, ema=args.ema)
    tta = args.tta or info["tta"]
    images, labels, classes = load_cifar10(args.data or info.get("data"), split=args.split)
    if len(classes) != info["num_classes"]:
        classes = info["classes"]
    preds = np.empty(len(labels), dtype=np.int64)
    loss, acc = evaluate(model, images, labels, args.batch_size, args.device, info["dtype"],
                         predictions=preds, tta=tta)
    cm = confusion_matrix(labels, preds, info["num_classes"])
    name, epoch = info["architecture"], info.get("epoch")
    res = {"checkpoint": args.checkpoint, "model": name, "split": args.split,
           "n": int(len(labels)), "loss": loss, "accuracy": acc, "epoch": epoch,
           "weights": info["weights"], "tta": tta,
           "classes": list(classes), "per_class": per_class(cm, classes),
           "confusion_matrix": cm.tolist()}
    if args.plot:
        from .plot import plot_confusion
        res["plot"] = plot_confusion(cm, classes, args.plot,
                                     title=f"{name}, {args.split}: {100 * acc:.2f}%")
    if args.json:
        print(json.dumps(res))
    else:
        at = f", epoch {epoch}" if epoch is not None else ""
        at += (", EMA weights" if info["weights"] == "ema" else "") + \
            (", flip TTA" if tta == "flip" else "")
        print(f"{name} ({args.checkpoint}{at}): {args.split} "
              f"accuracy {100 * acc:.2f}%  loss {loss:.4f}  on {len(labels)} images\n")
        print(format_report(cm, classes))
        if args.plot:
            print(f"\nconfusion matrix plot: {args.plot}")
    return 0


def configure_plot(p):
    p.add_argument("run_dir", metavar="RUN", help="run folder written by `minires train`")
    p.add_argument("--out", help="PNG path (default RUN/curves.png)")


def run_plot(args):
    from .plot import plot_run
    print(plot_run(args.run_dir, args.out))
    return 0
