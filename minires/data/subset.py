"""Class-balanced subsets (image folders load sorted by class, so the first n
images of the JPEG copy of CIFAR-10 are all airplanes)."""
import numpy as np


def balanced_sample(labels, n, seed=0):
    """Indices of ``n`` examples, as equal a number per class as possible, in a
    seeded random order."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    # round-robin over the classes: take the k-th image of every class before any (k+1)-th
    order = [idx[k] for k in range(max(map(len, per_class))) for idx in per_class if k < len(idx)]
    return np.array(order[:n], dtype=np.int64)
