"""The textbook's three residual blocks, with their backward written out.

Each block computes ``Y = relu(F(X) + shortcut(X))``.  Its backward shows the
one idea that makes ResNets train: the addition hands its gradient, unchanged,
to BOTH of its inputs, so ``dX`` is the residual path's gradient PLUS the
shortcut's.  Even when the residual path's Jacobian vanishes, the shortcut
still carries ``dY * 1{Y2 > 0}`` back to ``X``.

Attribute names (``Z1``, ``bn``, ``conv1``, ``downsampX`` ...) and their
registration order are the textbook's PyTorch classes', so ``state_dict``
keys and order match theirs.

One ``relu`` module is called twice in forward.  Modules keep one cache per
call on a stack, so backward must call ``relu.backward`` in the reverse order:
the final relu (the second call) first, the inner one second.
"""
from .activation import ReLU
from .checks import check_input
from .conv import Conv2d
from .linear import Linear
from .module import Module
from .norm import BatchNorm1d, BatchNorm2d


class ResBlockMLP(Module):
    """Fully connected residual block: ``Y = relu(Z2(relu(bn(Z1(X)))) + X)``.
    Input and output are (N, in_features)."""

    def __init__(self, in_features):
        super().__init__()
        f = self.in_features = int(in_features)
        self.Z1 = Linear(f, f)
        self.bn = BatchNorm1d(f)
        self.Z2 = Linear(f, f)
        self.relu = ReLU()  # used twice: inside the residual path and at the end

    def forward(self, X):
        check_input("ResBlockMLP", X, 2, channels=self.in_features, like=self.Z1.weight.data)
        Z1 = self.Z1(X)          # residual path F(X), step by step
        A1 = self.bn(Z1)
        H = self.relu(A1)        # relu, call 1
        Y1 = self.Z2(H)
        Y2 = Y1 + X              # skip connection
        Y = self.relu(Y2)        # relu, call 2
        self._save(Y, None)  # nothing to keep: the children hold their caches
        return Y

    def backward(self, dY):
        self._restore(dY)  # checks dY's shape and that a forward came first
        dY2 = self.relu.backward(dY)       # undoes relu call 2 (its cache is the newest)
        # Y2 = Y1 + X: the addition sends dY2 unchanged down BOTH paths.
        dY1 = dY2      # into the residual path
        dX_skip = dY2  # along the shortcut (the identity)
        # The residual path, each forward line undone in reverse order.
        dH = self.Z2.backward(dY1)         # Y1 = Z2(H)
        dA1 = self.relu.backward(dH)       # H = relu(A1): undoes relu call 1
        dZ1 = self.bn.backward(dA1)        # A1 = bn(Z1)
        dX_residual = self.Z1.backward(dZ1)  # Z1 = Z1(X)
        return dX_residual + dX_skip  # X fed both paths: their gradients add


class ResBlockConv(Module):
    """Convolutional residual block keeping shape (N, C, H, W):
    ``Y = relu(bn2(conv2(relu(bn1(conv1(X))))) + X)`` with 3x3 'same' convs."""

    def __init__(self, in_channels):
        super().__init__()
        c = self.in_channels = int(in_channels)
        self.conv1 = Conv2d(c, c, 3, padding="same", bias=False)  # BN's shift is the bias
        self.bn1 = BatchNorm2d(c)
        self.conv2 = Conv2d(c, c, 3, padding="same", bias=False)
        self.bn2 = BatchNorm2d(c)
        self.relu = ReLU()  # used twice

    def forward(self, X):
        check_input("ResBlockConv", X, 4, channels=self.in_channels,
                    like=self.conv1.weight.data)
        Z1 = self.conv1(X)       # residual path F(X), step by step
        A1 = self.bn1(Z1)
        H = self.relu(A1)        # relu, call 1
        Z2 = self.conv2(H)
        Y1 = self.bn2(Z2)
        Y2 = Y1 + X              # skip connection
        Y = self.relu(Y2)        # relu, call 2
        self._save(Y, None)
        return Y

    def backward(self, dY):
        self._restore(dY)
        dY2 = self.relu.backward(dY)       # undoes relu call 2 (its cache is the newest)
        # Y2 = Y1 + X: the addition sends dY2 unchanged down BOTH paths.
        dY1 = dY2      # into the residual path
        dX_skip = dY2  # along the shortcut (the identity)
        # The residual path, each forward line undone in reverse order.
        dZ2 = self.bn2.backward(dY1)       # Y1 = bn2(Z2)
        dH = self.conv2.backward(dZ2)      # Z2 = conv2(H)
        dA1 = self.relu.backward(dH)       # H = relu(A1): undoes relu call 1
        dZ1 = self.bn1.backward(dA1)       # A1 = bn1(Z1)
        dX_residual = self.conv1.backward(dZ1)  # Z1 = conv1(X)
        return dX_residual + dX_skip  # X fed both paths: their gradients add


class ResBlockDownSamp(Module):
    """Residual block that halves H and W and doubles the channels:
    (N, C, H, W) -> (N, 2C, ceil(H/2), ceil(W/2)).  The shortcut is a strided
    1x1 convolution ``downsampX`` (no batch norm), so that X's shape matches
    the residual path's output at the addition."""

    def __init__(self, in_channels):
        super().__init__()
        c = self.in_channels = int(in_channels)
        self.conv1 = Conv2d(c, 2 * c, 3, padding=1, stride=2, bias=False)
        self.bn1 = BatchNorm2d(2 * c)
        self.conv2 = Conv2d(2 * c, 2 * c, 3, padding="same", bias=False)
        self.bn2 = BatchNorm2d(2 * c)
        self.downsampX = Conv2d(c, 2 * c, 1, stride=2, bias=False)
        self.relu = ReLU()  # used twice

    def forward(self, X):
        check_input("ResBlockDownSamp", X, 4, channels=self.in_channels,
                    like=self.conv1.weight.data)
        Z1 = self.conv1(X)       # residual path F(X), step by step
        A1 = self.bn1(Z1)
        H = self.relu(A1)        # relu, call 1
        Z2 = self.conv2(H)
        Y1 = self.bn2(Z2)
        S = self.downsampX(X)    # the shortcut, reshaped to Y1's shape
        Y2 = Y1 + S
        Y = self.relu(Y2)        # relu, call 2
        self._save(Y, None)
        return Y

    def backward(self, dY):
        self._restore(dY)
        dY2 = self.relu.backward(dY)       # undoes relu call 2 (its cache is the newest)
        # Y2 = Y1 + S: the addition sends dY2 unchanged down BOTH paths.
        dY1 = dY2                               # into the residual path
        dX_skip = self.downsampX.backward(dY2)  # S = downsampX(X): back through the 1x1 conv
        # The residual path, each forward line undone in reverse order.
        dZ2 = self.bn2.backward(dY1)       # Y1 = bn2(Z2)
        dH = self.conv2.backward(dZ2)      # Z2 = conv2(H)
        dA1 = self.relu.backward(dH)       # H = relu(A1): undoes relu call 1
        dZ1 = self.bn1.backward(dA1)       # A1 = bn1(Z1)
        dX_residual = self.conv1.backward(dZ1)  # Z1 = conv1(X)
        return dX_residual + dX_skip  # X fed both paths: their gradients add
