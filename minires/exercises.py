"""The chapter's exercises, answered by code.

1. ``head_parameters()``: parameters of ResNet-18's classification head
   (AdaptiveAvgPool2d + Linear(512, 1000)) against AlexNet's classifier,
   read from ``minires.summary``'s rows.
2. ``identity_by_default()``: a deep residual MLP (a stack of ResBlockMLP)
   trained, with and without weight decay, on a target that a net with only
   two blocks represents exactly.  For each block it measures
   ``||F(X)|| / ||X||``, the norm of the residual path's output against the
   norm of the block's input, and how much the test error rises when that
   block's residual path is removed (the block replaced by ``relu(X)``,
   which is ``X`` here because every block input is a ReLU output).

Everything runs on the CPU in seconds to minutes; ``benchmarks/bench_exercises.py``
runs the full-size versions and writes the numbers and a plot.
"""
import numpy as np

from . import nn, optim
from . import random as mr_random
from .grad_mode import no_grad


# ---------------------------------------------------------------- 1. heads
def _param_rows(model, input_size, prefixes):
    from .summary import summary
    rows = summary(model, input_size, verbose=False).rows
    return {r.name: r.params for r in rows if r.is_leaf and r.name.split(".")[0] in prefixes}


def head_parameters(input_size=(3, 224, 224)):
    """{'resnet18_head': {...}, 'alexnet_classifier': {...}}: each a dict of
    its layers' parameter counts, with 'total' and 'model_total'."""
    from .models import alexnet, resnet18
    out = {}
    for key, model, prefixes in (("resnet18_head", resnet18(), ("avgpool", "fc")),
                                 ("alexnet_classifier", alexnet(), ("classifier",))):
        layers = _param_rows(model, input_size, prefixes)
        out[key] = {"layers": layers, "total": sum(layers.values()),
                    "model_total": sum(int(p.size) for p in model.parameters())}
    return out


# ---------------------------------------------------------------- 2. identity by default
def make_teacher(d_in=8, width=32, n_blocks=2, seed=123):
    """A target ``f(x)`` that the student's stem, ``n_blocks`` ResBlockMLP
    (batch norm at identity) and head represent exactly:
    ``h = relu(W0 x + b0)``, then ``h = relu(h + A2 relu(A1 h))`` per block,
    then ``w . h``.  Returns f (float64 NumPy in and out)."""
    rng = np.random.default_rng(seed)
    w0, b0 = rng.standard_normal((width, d_in)) / np.sqrt(d_in), 0.1 * rng.standard_normal(width)
    blocks = [(rng.standard_normal((width, width)) * np.sqrt(2 / width),
               rng.standard_normal((width, width)) / np.sqrt(width)) for _ in range(n_blocks)]
    w = rng.standard_normal(width) / np.sqrt(width)

    def f(x):
        h = np.maximum(x @ w0.T + b0, 0)
        for a1, a2 in blocks:
            h = np.maximum(h + np.maximum(h @ a1.T, 0) @ a2.T, 0)
        return h @ w
    return f


def make_student(d_in=8, width=32, n_blocks=10):
    """Linear + ReLU stem, ``n_blocks`` ResBlockMLP, Linear head to one output."""
    return nn.Sequential(nn.Linear(d_in, width), nn.ReLU(),
                         *[nn.ResBlockMLP(width) for _ in range(n_blocks)], nn.Linear(width, 1))


def _blocks(model):
    return [i for i, m in enumerate(model) if isinstance(m, nn.ResBlockMLP)]


def residual_path(block, x):
    """F(X) = Z2(relu(bn(Z1(X)))): the block's residual path alone."""
    return block.Z2(block.relu(block.bn(block.Z1(x))))


def residual_ratios(model, x):
    """``||F_b(X_b)|| / ||X_b||`` for every ResBlockMLP b of ``model`` (norms
    over the whole batch ``x``), in eval mode; the modes are restored."""
    was = model.training
    model.eval()
    ratios, h = [], x
    with no_grad():
        for m in model:
            if isinstance(m, nn.ResBlockMLP):
                ratios.append(float(np.linalg.norm(residual_path(m, h)) / np.linalg.norm(h)))
            h = m(h)
    model.train(was)
    return ratios


def predict(model, x, skip=None):
    """Eval-mode outputs, with block ``skip`` (an index into ``model``)
    replaced by ``relu(X)``: its residual path removed."""
    was = model.training
    model.eval()
    with no_grad():
        h = x
        for i, m in enumerate(model):
            h = np.maximum(h, 0) if i == skip else m(h)
    model.train(was)
    return h[:, 0]


def train_regression(model, x, y, steps, lr=0.05, momentum=0.9, weight_decay=0.0,
                     batch_size=128, seed=0):
    """SGD on the mean squared error, batches drawn with replacement; returns
    the mean training loss of every 100 steps."""
    opt = optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    rng, curve, window = np.random.default_rng(seed), [], []
    for step in range(steps):
        idx = rng.integers(0, len(x), batch_size)
        err = model(x[idx])[:, 0] - y[idx]
        model.backward((2 * err / batch_size)[:, None].astype(x.dtype))  # d mean(err^2)
        opt.step()
        opt.zero_grad()
        window.append(float(np.mean(err ** 2)))
        if len(window) == 100 or step == steps - 1:
            curve.append(sum(window) / len(window))
            window.clear()
    return curve


def identity_by_default(n_blocks=10, weight_decays=(0.0, 5e-3), steps=3000, lr=0.05,
                        d_in=8, width=32, teacher_blocks=2, n_train=4096, n_test=1024, seed=0,
                        log=None):
    """Train the same ``n_blocks``-block student (same initial weights, same
    batches) once per weight decay, plus a ``teacher_blocks``-block student
    with the largest weight decay as a reference.  Targets are scaled to unit
    variance, so a test MSE of 1 is no better than predicting the mean."""
    f = make_teacher(d_in, width, teacher_blocks)
    rng = np.random.default_rng(seed + 1)
    x_train, x_test = rng.standard_normal((n_train, d_in)), rng.standard_normal((n_test, d_in))
    scale = float(np.std(f(x_train)))
    y_train, y_test = (f(x_train) / scale).astype(np.float32), (f(x_test) / scale).astype(np.float32)
    x_train, x_test = x_train.astype(np.float32), x_test.astype(np.float32)
    runs = []
    for depth, wd in [(n_blocks, w) for w in weight_decays] + [(teacher_blocks, max(weight_decays))]:
        mr_random.manual_seed(seed)
        model = make_student(d_in, width, depth)
        init = residual_ratios(model, x_test)
        curve = train_regression(model, x_train, y_train, steps, lr, weight_decay=wd, seed=seed)
        mse = float(np.mean((predict(model, x_test) - y_test) ** 2))
        ablated = [float(np.mean((predict(model, x_test, skip=i) - y_test) ** 2))
                   for i in _blocks(model)]
        runs.append({"n_blocks": depth, "weight_decay": wd, "test_mse": mse, "loss_curve": curve,
                     "ratio_init": init, "ratio_trained": residual_ratios(model, x_test),
                     "test_mse_without_block": ablated})
        if log:
            log(f"{depth} blocks, weight decay {wd:g}: test MSE {mse:.4f}; ||F(X)||/||X|| per "
                f"block {' '.join(f'{r:.3f}' for r in runs[-1]['ratio_trained'])}")
    return {"settings": {"n_blocks": n_blocks, "weight_decays": list(weight_decays), "steps": steps,
                         "lr": lr, "momentum": 0.9, "batch_size": 128, "d_in": d_in,
                         "width": width, "teacher_blocks": teacher_blocks, "n_train": n_train,
                         "n_test": n_test, "seed": seed}, "runs": runs}
