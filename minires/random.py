"""Seeded, savable randomness for everything minires draws.

Each purpose has its own stream (``init``, ``dropout``, ``data``, ``augment``)
so that, for example, adding a dropout layer does not change the data order.
All streams are NumPy generators on the host; their whole state can be saved
(``get_rng_state``) and restored (``set_rng_state``) for bit-exact resumes.
"""
import numpy

STREAMS = ("init", "dropout", "data", "augment")
_generators = {}
_seed = None


def manual_seed(seed):
    """Seed every stream minires draws from (like ``torch.manual_seed``)."""
    global _seed
    _seed = int(seed)
    children = numpy.random.SeedSequence(_seed).spawn(len(STREAMS))
    for name, ss in zip(STREAMS, children):
        _generators[name] = numpy.random.Generator(numpy.random.PCG64(ss))
    return _seed


def generator(stream):
    """The ``numpy.random.Generator`` of one stream (seeded from OS entropy until
    ``manual_seed`` is called)."""
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; streams are {STREAMS}")
    if stream not in _generators:
        _generators[stream] = numpy.random.default_rng()
    return _generators[stream]


def get_rng_state():
    """A picklable dict holding the state of every stream."""
    return {name: generator(name).bit_generator.state for name in STREAMS}


def set_rng_state(state):
    """Restore the streams from a dict made by ``get_rng_state()`` (streams it
    does not name are left as they are)."""
    for name, st in state.items():
        generator(name).bit_generator.state = st


def uniform(stream, shape, like):
    """float32 draws from U[0, 1) of ``shape``, on the device of the array ``like``.

    On the CPU they come straight from the stream.  On the GPU they are drawn
    on the device (copying a host draw in would be a host-to-device transfer
    inside every training step): a cuRAND generator is seeded with one 63-bit
    integer taken from the host stream.  The host stream's state therefore
    still decides every draw, so ``get_rng_state``/``set_rng_state`` keep GPU
    runs reproducible and resumable too.  (GPU and CPU draws differ.)"""
    from . import backend
    gen = generator(stream)
    if not backend.is_cupy_array(like):
        return gen.random(shape, dtype=numpy.float32)
    cp = backend.cupy_or_none()
    seed = int(gen.integers(0, 2 ** 63 - 1))
    return cp.random.RandomState(seed).random_sample(shape, dtype=numpy.float32)
