"""The per-rank batch loader: BatchLoader's prefetching and augmentation over
a DistributedSampler's shard of every global batch."""
from ..data.loader import BatchLoader
from ..data.transforms import crop_offsets, flip_mask


class DistributedBatchLoader(BatchLoader):
    """Yields this rank's ``(x, y)`` for each step of ``epoch``.

    The order and the augmentation come from ``(sampler.seed, epoch)``, not
    from minires.random's streams: every rank must agree on the order without
    talking, and the crop and flip of a sample are drawn for its position in
    the epoch, so they differ from rank to rank (each rank holds other
    positions) yet are fixed by the seed, whatever the number of ranks.
    """

    def __init__(self, images, labels, sampler, epoch=0, augment=False, **kwargs):
        super().__init__(images, labels, sampler.batch_size, shuffle=sampler.shuffle,
                         augment=augment, **kwargs)
        if sampler.num_samples != len(self.images):
            raise ValueError(f"DistributedBatchLoader: the sampler covers {sampler.num_samples} "
                             f"samples but there are {len(self.images)} images")
        self.sampler, self.epoch = sampler, int(epoch)
        self._slices = sampler.local_slices()

    def __len__(self):
        return len(self.sampler)

    def _plan_epoch(self):
        order = self.sampler.order(self.epoch)
        offsets = flips = None
        if self.augment:
            rng = self.sampler.augment_generator(self.epoch)
            offsets = crop_offsets(len(order), self.padding, rng, self.crop_slack())
            flips = flip_mask(len(order), 0.5, rng)
        return order, offsets, flips

    def _batch_slice(self, k):
        return slice(*self._slices[k])  # this rank's share of global batch k

    def __repr__(self):
        return (f"DistributedBatchLoader(n={len(self.images)}, global_batch_size="
                f"{self.sampler.batch_size}, rank={self.sampler.rank}, "
                f"world_size={self.sampler.world_size}, epoch={self.epoch}, "
                f"augment={self.augment}, prefetch={self.prefetch}, device='{self.device}')")
