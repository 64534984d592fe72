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
    for name, st in state.items():
        generator(name).bit_generator.state = st
