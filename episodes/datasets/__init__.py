"""Dataset loaders: files on disk -> a decoded uint8 tensor cache -> :class:`episodes.FewShotDataset`."""

from episodes.datasets.cache import cached_arrays, default_cache_dir, source_fingerprint
from episodes.datasets.download import download_file, safe_extract_zip
from episodes.datasets.folder import load_image_folder
from episodes.datasets.miniimagenet import load_mini_imagenet
from episodes.datasets.omniglot import download_omniglot, load_omniglot, pack_omniglot

__all__ = [
    "cached_arrays",
    "default_cache_dir",
    "download_file",
    "download_omniglot",
    "load_image_folder",
    "load_mini_imagenet",
    "load_omniglot",
    "pack_omniglot",
    "safe_extract_zip",
    "source_fingerprint",
]
