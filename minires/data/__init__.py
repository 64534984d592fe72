"""CIFAR-10 data: reading (python format or image folders), download, cache,
batch augmentation and the prefetching loader.

    images, labels, classes = load_cifar10(root, split="train")   # uint8 NHWC
    loader = BatchLoader(images, labels, 128, augment=True)        # float32 NCHW batches
"""
from .cache import CorruptDataError, resolve_cache_dir
from .cifar import CIFAR10_CLASSES, find_cifar10, load_cifar10, resolve_data_root
from .download import CIFAR10_MD5, CIFAR10_URL, download_cifar10
from .imagefolder import read_image_folder
from .loader import BatchLoader
from .subset import balanced_sample
from .transforms import (CIFAR10_MEAN, CIFAR10_STD, crop_at, flip_where, normalize, random_crop,
                         random_flip)

__all__ = ["load_cifar10", "download_cifar10", "read_image_folder", "BatchLoader", "balanced_sample",
           "random_crop", "random_flip", "crop_at", "flip_where", "normalize",
           "CorruptDataError", "find_cifar10", "resolve_data_root", "resolve_cache_dir",
           "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_URL", "CIFAR10_MD5"]
