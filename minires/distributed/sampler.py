"""Which samples each rank trains on: one shared permutation per epoch, cut
into global batches, each global batch split across the ranks.

Every rank computes the same permutation from ``(seed, epoch)`` alone, so no
indices travel over the network, a resumed run sees the same order, and the
order does not depend on how many epochs a process has lived through.

    global batch k   = perm[k*B : (k+1)*B]            (B = --batch-size)
    rank r's share   = a contiguous piece of it, sizes differing by at most 1

Every sample is visited exactly once per epoch and every rank takes the same
number of steps.  Should the last global batch hold fewer samples than there
are ranks, some rank would get an empty shard (and a layer with no input, or
a synchronised batch norm waiting for it); those few samples are then folded
into the global batch before, which keeps the exactly-once coverage.
"""
import numpy as np


def shard_bounds(count, rank, world_size):
    """``(start, stop)`` of rank ``rank``'s piece of ``count`` items: contiguous,
    in rank order, the first ``count % world_size`` ranks one item larger."""
    base, extra = divmod(int(count), int(world_size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def epoch_generator(seed, epoch, purpose):
    """A NumPy generator fixed by (seed, epoch, purpose).  A SeedSequence of the
    tuple, not ``seed + epoch``: seed 0 at epoch 1 must not replay seed 1 at epoch 0."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch),
                                                                       int(purpose)])))


ORDER, AUGMENT = 0, 1  # purposes: independent streams for the order and the augmentation


class DistributedSampler:
    """The per-epoch plan of a data-parallel run over ``num_samples`` samples.

    ``batch_size`` is the GLOBAL batch (all ranks together), as ``--batch-size``.
    ``len(sampler)`` is the number of steps per epoch, the same on every rank.
    """

    def __init__(self, num_samples, batch_size, rank=0, world_size=1, seed=0, shuffle=True):
        num_samples, batch_size = int(num_samples), int(batch_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"DistributedSampler: rank must be in [0, {world_size}), got {rank}")
        if batch_size < world_size:
            raise ValueError(f"DistributedSampler: the global batch size ({batch_size}) must be at "
                             f"least the number of ranks ({world_size}): every rank needs a sample")
        if num_samples < world_size:
            raise ValueError(f"DistributedSampler: {num_samples} samples cannot be shared by "
                             f"{world_size} ranks")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size = int(rank), int(world_size)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self._global = self._global_batches()

    def _global_batches(self):
        """``(start, stop)`` of every global batch in the permuted order."""
        bounds = [(s, min(s + self.batch_size, self.num_samples))
                  for s in range(0, self.num_samples, self.batch_size)]
        last = bounds[-1][1] - bounds[-1][0]
        if len(bounds) > 1 and last < self.world_size:
            bounds[-2:] = [(bounds[-2][0], bounds[-1][1])]  # fold a too-small tail in
        return bounds

    def __len__(self):
        return len(self._global)

    def order(self, epoch):
        """The epoch's permutation of ``range(num_samples)``, identical on every rank."""
        if not self.shuffle:
            return np.arange(self.num_samples)
        return epoch_generator(self.seed, epoch, ORDER).permutation(self.num_samples)

    def augment_generator(self, epoch):
        """The epoch's augmentation stream.  Every rank draws the parameters of
        ALL positions and keeps its own, so each sample's crop and flip depend
        on the seed, the epoch and its position only, not on the world size."""
        return epoch_generator(self.seed, epoch, AUGMENT)

    def global_sizes(self):
        """Samples in each step's global batch."""
        return [stop - start for start, stop in self._global]

    def local_slices(self, rank=None):
        """This rank's ``(start, stop)`` positions in the permuted order, per step."""
        rank = self.rank if rank is None else rank
        out = []
        for start, stop in self._global:
            lo, hi = shard_bounds(stop - start, rank, self.world_size)
            out.append((start + lo, start + hi))
        return out

    def local_sizes(self, rank=None):
        return [stop - start for start, stop in self.local_slices(rank)]

    def indices(self, epoch, rank=None):
        """This rank's sample indices for each step of ``epoch`` (a list of arrays)."""
        order = self.order(epoch)
        return [order[start:stop] for start, stop in self.local_slices(rank)]

    def __repr__(self):
        return (f"DistributedSampler(num_samples={self.num_samples}, batch_size={self.batch_size}, "
                f"rank={self.rank}, world_size={self.world_size}, seed={self.seed}, "
                f"shuffle={self.shuffle})")
