"""A testing kit for people who write their own layers (``pip install "minires[testing]"``).

    from hypothesis import strategies as st
    from minires.testing import arrays, cases, check_module, conv_configs, shapes

    check_module(lambda: LeakyReLU(0.1), arrays(shapes(min_dims=2)))
    check_module(Conv2d, cases(conv_configs()))

* strategies: ``shapes``, ``arrays`` (kink-free), ``conv_configs``,
  ``pool_configs``, ``cases``, ``upstream_gradients``;
* ``check_module``: the whole module contract over hypothesis examples;
* ``check_against_torch``: forward and gradients against a torch module;
* ``CHECKS``: the single contract checks, by name, to call one at a time;
* ``randomize_batchnorm``: random BatchNorm affine parameters, so a block's
  BN -> ReLU has no kink at an evenly spaced batch's mean.

Importing ``minires.testing`` costs nothing: hypothesis (and torch, for
``check_against_torch``) is imported on first use of a name from here.
"""
import importlib

_NAMES = {
    "shapes": "strategies", "arrays": "strategies", "conv_configs": "strategies",
    "pool_configs": "strategies", "cases": "strategies", "upstream_gradients": "strategies",
    "check_module": "runner", "check_against_torch": "torch_parity", "CHECKS": "contract",
    "randomize_batchnorm": "contract",
}
__all__ = sorted(_NAMES)


def __getattr__(name):
    if name not in _NAMES:
        raise AttributeError(f"module 'minires.testing' has no attribute {name!r}")
    try:
        module = importlib.import_module(f"{__name__}.{_NAMES[name]}")
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "hypothesis":
            raise ImportError(f"minires.testing.{name} needs hypothesis, which is not "
                              "installed: pip install 'minires[testing]' (or pip install "
                              "hypothesis)") from None
        raise
    return getattr(module, name)


def __dir__():
    return __all__
