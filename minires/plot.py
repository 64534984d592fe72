"""``minires plot runs/NAME``: loss, accuracy and learning rate per epoch as a PNG."""
import json
import os

from .errors import CorruptFileError, MissingExtraError, MissingFileError
from .fileio import atomic_write


def require_matplotlib():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        raise MissingExtraError("plotting needs matplotlib: pip install 'minires[plot]'") from None


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise MissingFileError(f"no metrics.jsonl in {run_dir}: is it a `minires train` run folder?")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise CorruptFileError(f"{path} holds no epochs yet")
    return rows


def plot_run(run_dir, out=None):
    """Write ``run_dir/curves.png`` (or ``out``) and return its path."""
    plt = require_matplotlib()
    rows = read_metrics(run_dir)
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    ax[0].plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    tested = [r for r in rows if r["test_acc"] is not None]  # (--eval-every skips epochs)
    ax[0].plot([r["epoch"] for r in tested], [r["test_loss"] for r in tested], "o-", label="test")
    ax[0].set_title("loss")
    ax[1].plot(ep, [100 * r["train_acc"] for r in rows], "o-", label="train")
    ax[1].plot([r["epoch"] for r in tested], [100 * r["test_acc"] for r in tested], "o-",
               label="test")
    ax[1].set_title("accuracy (%)")
    ax[2].plot(ep, [r["lr"] for r in rows], "o-")
    ax[2].set_title("learning rate (end of epoch)")
    for a in ax:
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
    ax[0].legend()
    ax[1].legend()
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)))
    fig.tight_layout()
    out = out or os.path.join(run_dir, "curves.png")
    with atomic_write(out) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out


def plot_confusion(cm, classes, out, title=None):
    """The confusion matrix ``cm`` (rows: true class, columns: predicted) as
    a PNG at ``out``: each cell's colour is its share of the row (the
    class's images), and it shows its count.  Returns ``out``."""
    plt = require_matplotlib()
    import numpy as np
    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * n, 0.8 + 0.55 * n))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n))
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticks(range(n))
    ax.set_yticklabels(classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with atomic_write(out) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out
