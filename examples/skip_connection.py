"""The chapter's residual block, forward and backward, with the fork printed.

    python examples/skip_connection.py

``ResBlockConv`` computes Y = relu(F(X) + X), F = bn2(conv2(relu(bn1(conv1(X))))).
In the backward the gradient reaching the addition, dY2 = dY * 1{Y2 > 0},
is copied unchanged down both paths: the skip path hands it straight to X,
and the residual path carries it back through F.  So
dX = dY2 (the skip) + dF/dX^T dY2 (the residual): even when the residual
path's gradient is tiny, the skip keeps dX at least as large as dY2.
"""
import numpy as np

import minires
from minires import nn


def fork(seed=0):
    minires.manual_seed(seed)
    rng = np.random.default_rng(seed)
    block = nn.ResBlockConv(2).to(dtype=np.float64)
    X = rng.standard_normal((2, 2, 4, 4))
    dY = rng.standard_normal((2, 2, 4, 4))  # a random upstream gradient, not all ones
    Y = block(X)
    dX = block.backward(dY)
    with minires.no_grad():  # Y2 = F(X) + X, before the last relu (no caches kept)
        Y2 = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(X))))) + X
    dY2 = dY * (Y2 > 0)                     # through the last relu
    d_skip = dY2                            # the skip path: the identity
    d_residual = dX - d_skip                # what came back through F
    print(f"|dY2|         = {np.linalg.norm(dY2):.4f}  (the gradient at the addition)")
    print(f"|dX via skip| = {np.linalg.norm(d_skip):.4f}  (dY2, unchanged)")
    print(f"|dX via F|    = {np.linalg.norm(d_residual):.4f}  (back through conv, bn, relu)")
    print(f"|dX|          = {np.linalg.norm(dX):.4f}  (their sum)")
    # the block's backward against finite differences of sum(Y * dY)
    errors = minires.gradcheck(nn.ResBlockConv(2).to(dtype=np.float64), X)
    print(f"gradcheck: worst |analytic - numeric| = {max(errors.values()):.2e}")
    return dX, d_skip, d_residual, errors


if __name__ == "__main__":
    fork()
