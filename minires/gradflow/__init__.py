"""Gradient flow through plain and residual nets.

* ``recorder``: ``GradientRecorder``, per-layer gradient norms and each
  residual block's skip / residual split, recorded from outside the modules.
* ``command``: the ``minires gradflow`` subcommand (``configure_gradflow``,
  ``run_gradflow``) and the experiment, tables and plot behind it.
"""
from .recorder import BlockGrad, GradientRecorder, LayerGrad, block_paths
from .command import (build_cifar_model, configure_gradflow, format_tables, gradflow_experiment,
                      gradient_profile, plot_gradflow, run_gradflow)

__all__ = ["GradientRecorder", "LayerGrad", "BlockGrad", "block_paths", "build_cifar_model",
           "gradient_profile", "gradflow_experiment", "format_tables", "plot_gradflow",
           "configure_gradflow", "run_gradflow"]
