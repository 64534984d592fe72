"""minires: ResNets from scratch in NumPy/CuPy with hand-written backward passes."""
from . import backend, nn
from .backend import get_array_module, to_device, to_numpy, gpu_available
from .grad_mode import no_grad, is_grad_enabled
from .random import manual_seed, get_rng_state, set_rng_state
from .gradcheck import gradcheck
from . import optim, data, models, convert
from .summary import summary
from .parallel import set_num_threads, get_num_threads
from .heap import keep_freed_memory

__version__ = "0.1.0"

__all__ = ["backend", "nn", "get_array_module", "to_device", "to_numpy", "gpu_available",
           "no_grad", "is_grad_enabled", "manual_seed", "get_rng_state", "set_rng_state", "gradcheck", "optim", "data", "models", "convert", "summary",
           "set_num_threads", "get_num_threads", "keep_freed_memory"]
