"""Dataset loaders: files on disk -> a decoded uint8 tensor cache -> :class:`episodes.FewShotDataset`."""

from episodes.datasets.cache import cached_arrays, default_cache_dir, source_fingerprint
from episodes.datasets.chestx import load_chestx
from episodes.datasets.cifar import load_cifar_fs, load_fc100
from episodes.datasets.crop_diseases import load_crop_diseases
from episodes.datasets.cub import load_cub
from episodes.datasets.download import download_file, safe_extract_zip
from episodes.datasets.eurosat import load_eurosat
from episodes.datasets.folder import load_image_folder
from episodes.datasets.isic import load_isic
from episodes.datasets.loading import group_by_class, load_cached_dataset
from episodes.datasets.miniimagenet import load_mini_imagenet
from episodes.datasets.omniglot import load_omniglot
from episodes.datasets.omniglot_source import download_omniglot, pack_omniglot
from episodes.datasets.pickles import read_learn2learn_pickle, read_pickle_dict, read_rfs_pickle
from episodes.datasets.tiered_imagenet import load_tiered_imagenet

__all__ = [
    "cached_arrays",
    "default_cache_dir",
    "download_file",
    "download_omniglot",
    "group_by_class",
    "load_cached_dataset",
    "load_chestx",
    "load_cifar_fs",
    "load_crop_diseases",
    "load_cub",
    "load_eurosat",
    "load_fc100",
    "load_image_folder",
    "load_isic",
    "load_mini_imagenet",
    "load_omniglot",
    "load_tiered_imagenet",
    "pack_omniglot",
    "read_learn2learn_pickle",
    "read_pickle_dict",
    "read_rfs_pickle",
    "safe_extract_zip",
    "source_fingerprint",
]
