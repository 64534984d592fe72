"""Shared pieces of the GPU suite.

Every parity test here takes a ``device`` parameter: on "cuda" it is the GPU
check the suite exists for (minires on CuPy against torch CUDA with TF32 off),
and on "cpu" the same code runs against torch on the CPU, so that the test code
itself is exercised in CI, which has no GPU.
"""
import numpy as np
import pytest

import minires

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def torch_device(device):
    """torch, set up as the reference for ``device``; skips when torch has no CUDA."""
    import torch
    if device == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("torch has no CUDA build or sees no GPU: no CUDA reference")
        # TF32 would round matmul/conv inputs to 10 mantissa bits: no parity then
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return torch.device(device)


def to_torch(a, device, requires_grad=False):
    import torch
    t = torch.from_numpy(np.ascontiguousarray(minires.to_numpy(a))).to(device)
    return t.requires_grad_(requires_grad)


def on(device, a):
    """A NumPy array moved to minires's ``device``."""
    return minires.to_device(a, device)
