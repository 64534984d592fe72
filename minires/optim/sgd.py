"""Stochastic gradient descent with torch.optim.SGD's exact semantics.

Per parameter, every step (as torch):
    g = grad + weight_decay * p                    (L2 decay added to the gradient)
    buf = g                  on the first step      (momentum buffer = gradient)
    buf = momentum * buf + (1 - dampening) * g      afterwards
    g = g + momentum * buf   if nesterov else  g = buf
    p -= lr * g
"""
from .. import kernels
from ..backend import get_array_module
from ..nn.module import zero_grads

_DEFAULTS = ("lr", "momentum", "dampening", "weight_decay", "nesterov")


class SGD:
    """Stochastic gradient descent with torch.optim.SGD's semantics: momentum,
    dampening, Nesterov, L2 weight decay and parameter groups (dicts with
    ``"params"`` and per-group settings), ``zero_grad``, ``step`` and
    ``state_dict``/``load_state_dict``."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, got "
                             f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}")
        self.defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                             weight_decay=weight_decay, nesterov=nesterov)
        params = list(params)
        if not params:
            raise ValueError("SGD: got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        self.param_groups = []
        for group in params:
            self.add_param_group(group)
        self.state = {}  # id(param) -> {"momentum_buffer": array}

    def add_param_group(self, group):
        group = dict(group)
        group["params"] = list(group["params"])
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        unknown = set(group) - set(_DEFAULTS) - {"params", "initial_lr", "name"}
        if unknown:
            raise ValueError(f"SGD: unknown parameter-group options {sorted(unknown)}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: Nesterov momentum requires a momentum > 0 and zero dampening")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in group["params"]):
            raise ValueError("SGD: some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none=True):
        zero_grads((p for group in self.param_groups for p in group["params"]), set_to_none)

    def step(self):
        for group in self.param_groups:
            lr, mom, damp = group["lr"], group["momentum"], group["dampening"]
            wd, nesterov = group["weight_decay"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if mom != 0 and kernels.use_for(p.data):  # the same update, one CUDA kernel
                    self._fused_step(p, lr, mom, damp, wd, nesterov)
                    continue
                g = p.grad
                if wd != 0:
                    g = g + p.data * p.data.dtype.type(wd)
                if mom != 0:
                    st = self.state.setdefault(id(p), {})
                    buf = st.get("momentum_buffer")
                    if buf is None:
                        buf = st["momentum_buffer"] = g.copy()
                    else:
                        buf *= mom
                        buf += (1 - damp) * g
                    g = g + mom * buf if nesterov else buf
                # in place: the Parameter keeps its array (and its backend)
                p.data -= p.data.dtype.type(lr) * g

    def _fused_step(self, p, lr, mom, damp, wd, nesterov):
        # (without momentum the plain update is only two array operations)
        from ..kernels.sgd import sgd_update
        st = self.state.setdefault(id(p), {})
        buf = st.get("momentum_buffer")
        first = buf is None
        if first:
            buf = st["momentum_buffer"] = get_array_module(p.data).empty_like(p.data)
        sgd_update(p.data, p.grad, buf, lr, wd, mom, damp, nesterov, first)

    # ---- checkpoints: parameters are referred to by their position, as torch does
    def _ordered_params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self):
        index = {id(p): i for i, p in enumerate(self._ordered_params())}
        state = {index[pid]: {k: v.copy() for k, v in st.items()}
                 for pid, st in self.state.items() if pid in index}
        groups, start = [], 0
        for g in self.param_groups:
            d = {k: v for k, v in g.items() if k != "params"}
            d["params"] = list(range(start, start + len(g["params"])))
            start += len(g["params"])
            groups.append(d)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd):
        groups = sd["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(a["params"]) != len(b["params"]) for a, b in zip(groups, self.param_groups)):
            raise ValueError("SGD.load_state_dict: the saved parameter groups do not match "
                             "this optimiser's (different model or grouping)")
        for g, saved in zip(self.param_groups, groups):
            for k, v in saved.items():
                if k != "params":
                    g[k] = v
        params = self._ordered_params()
        self.state = {}
        for i, st in sd["state"].items():
            p = params[int(i)]
            xp = get_array_module(p.data)
            self.state[id(p)] = {k: xp.asarray(v, dtype=p.data.dtype).copy() for k, v in st.items()}

    def __repr__(self):
        lines = ["SGD ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(k for k in g if k != "params"):
                lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines) + "\n)"


def split_decay_groups(module, weight_decay):
    """Parameter groups with no weight decay on biases and batch-norm parameters
    (every parameter with fewer than 2 dimensions), a common CIFAR recipe."""
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        (decay if p.data.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
