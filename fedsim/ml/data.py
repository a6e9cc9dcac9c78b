"""Data for training for real: the bundled digits set, image folders on disk, synthetic sets.

- ``load_digits_split``: scikit-learn's 8x8 handwritten digits (1797 images, shipped with
  scikit-learn, so no download), split per class with a seeded numpy generator so the split is
  the same on every platform and scikit-learn version. The file is read straight from the
  installed package, without importing scikit-learn (``digits_arrays``).
- ``synthetic_classification``: as many images as asked for, each its class's seeded prototype
  plus Gaussian noise: learnable, of any size, for federations larger than the digits allow.
- ``ImageFolderDataset``: an ImageNet-style tree ``root/<class name>/**/*.{jpg,jpeg,png,npy}``
  for users who hold a real data set; images are decoded with Pillow (imported only when an
  image file is read) and resized to a square.
- ``load_npz``: arrays ``X`` and ``y`` from an ``.npz`` file, the form an agent's ``--data``
  also takes.
- ``synthetic_imagenet``: random tensors of ImageNet's shape, for timing where the pixels do
  not matter.
- ``load_split`` and ``training_size``: the data set a workload names (``DATASETS``), split
  into training and test sets the same stratified, seeded way whichever it is.
- ``factory_shards``: a user's data set and partition (``workload.dataset.factory``), called
  and its shards checked.

Images come out as float32 ``(channels, height, width)`` in [0, 1]; labels as int64 class
indices.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from fedsim.core.plugins import PluginError, check_call, factory
from fedsim.core.workload import DatasetSpec

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".npy")
DIGITS_MAX = 16.0  # the digits set counts ink per 4x4 block of a 32x32 bitmap: 0..16
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, the weights Pillow's "L" conversion uses
# What ``workload.dataset.name`` may name (a data set with a ``factory`` may name anything).
DATASETS = ("digits", "synthetic", "image_folder", "npz")
# What fedsim offers a data set factory, each passed when the factory declares it.
FACTORY_ARGUMENTS = ("num_clients", "num_classes", "input_size", "channels", "seed")
# Prototype pixels lie in [0.2, 0.8] and each sample adds this much noise (standard deviation)
# per pixel. At 8x8 and 10 classes (seed 0) the nearest class mean labels 94 % of held-out
# samples and a DigitsCNN trained centrally for 3 epochs 90 %: learnable, with room left for
# an accuracy curve to show a federation's losses.
SYNTHETIC_NOISE = 0.4


def load_digits_split(
    test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X_train, y_train, X_test, y_test)`` of the digits set, stratified by class.

    ``X`` is float32 of shape ``(n, 1, 8, 8)`` in [0, 1]; ``y`` is int64 in 0..9. Each class
    gives ``round(test_fraction * its size)`` images to the test set, chosen by a generator
    seeded with ``seed``; both sets keep the data set's order.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    images, target = digits_arrays()
    X = (images / DIGITS_MAX).astype(np.float32)[:, None, :, :]
    return _stratified_split(X, target.astype(np.int64), test_fraction, seed)


@functools.cache
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits set's ``(images, target)`` as ``sklearn.datasets.load_digits`` gives them.

    Read once per process (read-only arrays) from the ``digits.csv.gz`` that scikit-learn
    installs, found without importing scikit-learn: importing it costs about a second
    (scipy and its own utilities), reading the file a few milliseconds. The file holds one
    image per row, 64 pixel counts then the class, as ``load_digits`` parses it. Where the
    package is laid out otherwise, ``load_digits`` itself reads it.
    """
    spec = importlib.util.find_spec("sklearn")
    locations = [] if spec is None else list(spec.submodule_search_locations or [])
    for location in locations:
        path = Path(location, "datasets", "data", "digits.csv.gz")
        if path.is_file():
            with gzip.open(path, mode="rt", encoding="utf-8") as text:
                data = np.loadtxt(text, delimiter=",")
            images = data[:, :-1].reshape(-1, 8, 8)
            target = data[:, -1].astype(int, copy=False)
            break
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, target = digits.images, digits.target
    images.setflags(write=False)
    target.setflags(write=False)
    return images, target


def synthetic_classification(
    n: int,
    *,
    num_classes: int,
    size: int = 8,
    channels: int = 1,
    seed: int = 0,
    noise: float = SYNTHETIC_NOISE,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``(n, channels, size, size)`` in [0, 1] and their labels, seeded.

    Each class has a prototype image, its pixels drawn uniformly from [0.2, 0.8]; a sample is
    its class's prototype plus independent Gaussian noise of standard deviation ``noise`` per
    pixel, clipped to [0, 1]. Labels cycle through the classes (``i % num_classes``), so every
    class holds ``n // num_classes`` or one more samples. The same arguments give the same
    arrays; a sample depends on ``n`` only through its index, so a larger set extends a
    smaller one.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if size < 1 or channels < 1:
        raise ValueError(f"size and channels must be >= 1, got {size} and {channels}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    shape = (channels, size, size)
    prototypes_rng, noise_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2)
    )
    prototypes = prototypes_rng.uniform(0.2, 0.8, size=(num_classes, *shape)).astype(np.float32)
    y = np.arange(n, dtype=np.int64) % num_classes
    X = noise_rng.standard_normal(size=(n, *shape), dtype=np.float32)
    X *= noise
    X += prototypes[y]
    np.clip(X, 0.0, 1.0, out=X)
    return X, y


def load_split(
    dataset: DatasetSpec,
    *,
    input_size: int,
    channels: int,
    num_classes: int,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X_train, y_train, X_test, y_test)`` of the data set ``dataset.name`` names.

    ``digits``: scikit-learn's digits (8x8 grey, whatever ``input_size`` says). ``synthetic``:
    ``dataset.samples`` images of ``synthetic_classification``, ``input_size`` square with
    ``channels`` channels, drawn under ``seed``. ``image_folder``: every image under
    ``dataset.path``, resized to ``input_size`` with ``channels`` channels. Each is split per
    class as ``load_digits_split`` does.
    """
    if dataset.name == "digits":
        return load_digits_split(test_fraction=test_fraction, seed=seed)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if dataset.name == "synthetic":
        X, y = synthetic_classification(
            dataset.samples,
            num_classes=num_classes,
            size=input_size,
            channels=channels,
            seed=seed,
        )
    elif dataset.name == "image_folder":
        X, y = _image_folder(dataset, size=input_size, channels=channels).to_arrays()
    elif dataset.name == "npz":
        X, y = load_npz(_npz_path(dataset))
    else:
        raise ValueError(f"unknown data set {dataset.name!r}; known: {', '.join(DATASETS)}")
    return _stratified_split(X, y, test_fraction, seed)


def training_size(dataset: DatasetSpec, *, num_classes: int, test_fraction: float) -> int:
    """How many samples ``load_split`` puts in the training set, without reading any pixel.

    Raises ``ValueError`` for a data set it cannot split (an unknown name, an image folder
    with more classes than ``num_classes``, a split that holds out no test sample).
    """
    if dataset.name == "digits":
        labels = digits_arrays()[1]
    elif dataset.name == "synthetic":
        labels = np.arange(dataset.samples) % num_classes
    elif dataset.name == "image_folder":
        folder = _image_folder(dataset, size=1)
        if len(folder.classes) > num_classes:
            raise ValueError(
                f"{dataset.path} has {len(folder.classes)} class folders, more than the "
                f"model's {num_classes} classes"
            )
        labels = np.array([label for _, label in folder.samples])
    elif dataset.name == "npz":
        labels = load_npz(_npz_path(dataset), labels_only=True)[1]
        if labels.max(initial=0) >= num_classes:
            raise ValueError(
                f"{dataset.path} holds class {labels.max()}, beyond the model's {num_classes} "
                "classes"
            )
    else:
        raise ValueError(f"unknown data set {dataset.name!r}; known: {', '.join(DATASETS)}")
    _, counts = np.unique(labels, return_counts=True)
    held_out = sum(round(test_fraction * n) for n in counts)
    if held_out == 0:
        raise ValueError(
            f"a test_fraction of {test_fraction:g} holds out no sample of the "
            f"{len(labels)} ({', '.join(map(str, counts))} per class) for evaluation"
        )
    return int(len(labels) - held_out)


def load_npz(
    path: str | os.PathLike, *, labels_only: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` from an ``.npz`` file: ``X`` float (or uint8 pixels, scaled to [0, 1]) of shape
    ``(n, channels, height, width)``, ``y`` integer class indices ``(n,)``. With
    ``labels_only``, ``X`` is left unread (an empty array). ``ValueError`` names what is wrong.
    """
    with np.load(path, allow_pickle=False) as arrays:
        missing = [k for k in ("X", "y") if k not in arrays.files]
        if missing:
            raise ValueError(f"{path} has no array {', '.join(missing)} (needs X and y)")
        y = arrays["y"]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
            raise ValueError(f"{path}: y must hold class indices >= 0, shape (n,)")
        # Without the pixels (a config check reads the labels alone), X's shape from its header.
        X = np.empty(0, dtype=np.float32) if labels_only else arrays["X"]
        shape = _npy_shape(arrays, "X") if labels_only else X.shape
    if len(shape) != 4 or shape[0] != len(y):
        raise ValueError(
            f"{path}: X must be (n, channels, height, width) with n = len(y) = {len(y)}, "
            f"got {shape}"
        )
    if labels_only:
        return X, y.astype(np.int64)
    pixels = X.astype(np.float32) / 255.0 if X.dtype == np.uint8 else X.astype(np.float32)
    return pixels, y.astype(np.int64)


def _npy_shape(arrays: Any, key: str) -> tuple[int, ...]:
    """The shape of array ``key`` of an open ``.npz`` file, from its header, no data read."""
    with arrays.zip.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, _ = read(f)
    return tuple(shape)


def factory_shards(
    dataset: DatasetSpec,
    *,
    num_clients: int,
    num_classes: int,
    input_size: int,
    channels: int,
    seed: int,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """Each client's ``(X, y)`` and the test ``(X, y)`` from the user's ``dataset.factory``.

    The factory is called with ``dataset.factory_params`` and those of ``FACTORY_ARGUMENTS``
    it declares; it returns ``(shards, (X_test, y_test))`` with one ``(X, y)`` per client.
    Raises :class:`~fedsim.core.plugins.PluginError` naming the field for a result of another
    form.
    """
    where, path = "workload.dataset.factory", dataset.factory
    assert path is not None, "a data set without a factory has no factory shards"
    offered = {
        "num_clients": num_clients,
        "num_classes": num_classes,
        "input_size": input_size,
        "channels": channels,
        "seed": seed,
    }
    make = factory(where, path)
    arguments = {**factory_arguments(make, offered), **dataset.factory_params}
    check_call(where, path, make, arguments)
    try:
        made = make(**arguments)
    except Exception as e:
        raise PluginError(f"{where}: {path} raised {type(e).__name__}: {e}") from None
    if not (isinstance(made, Sequence) and len(made) == 2):
        raise PluginError(
            f"{where}: {path} must return (shards, (X_test, y_test)), got a {type(made).__name__}"
        )
    shards, test = made
    if not isinstance(shards, Sequence) or len(shards) != num_clients:
        got = len(shards) if isinstance(shards, Sequence) else type(shards).__name__
        raise PluginError(
            f"{where}: {path} must return one (X, y) shard per client ({num_clients}), got {got}"
        )
    checked = [
        _arrays(f"{where}: {path}'s shard {i}", shard, num_classes)
        for i, shard in enumerate(shards)
    ]
    return checked, _arrays(f"{where}: {path}'s test set", test, num_classes)


def factory_arguments(make: Any, offered: Mapping[str, Any]) -> dict[str, Any]:
    """Those of ``offered`` that ``make`` declares (all of them if it takes ``**kwargs``)."""
    try:
        parameters = inspect.signature(make).parameters
    except (TypeError, ValueError):
        return dict(offered)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(offered)
    return {k: v for k, v in offered.items() if k in parameters}


def _arrays(what: str, pair: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``pair`` as float32 ``X`` and int64 ``y`` of equal, non-zero length, labels in range."""
    if not (isinstance(pair, Sequence) and len(pair) == 2):
        raise PluginError(f"{what} must be a pair (X, y), got a {type(pair).__name__}")
    try:
        X = np.asarray(pair[0], dtype=np.float32)
        y = np.asarray(pair[1])
    except (TypeError, ValueError) as e:
        raise PluginError(f"{what}: not numeric arrays ({e})") from None
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise PluginError(f"{what}: y must be integer class indices of shape (n,), got {y.shape}")
    if len(y) == 0 or len(X) != len(y):
        raise PluginError(f"{what}: X has {len(X)} samples and y {len(y)}; need as many, >= 1")
    if y.min() < 0 or y.max() >= num_classes:
        raise PluginError(f"{what}: labels must be in 0..{num_classes - 1}")
    return X, y.astype(np.int64)


def _npz_path(dataset: DatasetSpec) -> str:
    if dataset.path is None:
        raise ValueError("an npz data set needs a path (workload.dataset.path)")
    return dataset.path


def _image_folder(dataset: DatasetSpec, *, size: int, channels: int = 3) -> ImageFolderDataset:
    if dataset.path is None:
        raise ValueError("an image_folder data set needs a path (workload.dataset.path)")
    return ImageFolderDataset(dataset.path, size=size, channels=channels)


def _stratified_split(
    X: np.ndarray, y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each class gives ``round(test_fraction * its size)`` samples, chosen by a generator
    seeded with ``seed``, to the test set; both sets keep the data set's order."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        test[rng.choice(members, size=round(test_fraction * len(members)), replace=False)] = True
    return X[~test], y[~test], X[test], y[test]


def synthetic_imagenet(
    n: int, size: int = 224, num_classes: int = 1000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random RGB images ``(n, 3, size, size)`` in [0, 1] and random labels, seeded."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((n, 3, size, size), generator=generator)
    labels = torch.randint(0, num_classes, (n,), generator=generator)
    return images, labels


class ImageFolderDataset(Dataset):
    """Images under ``root/<class name>/``, the class index being the name's sorted position.

    Files are found recursively and case-insensitively by extension (ImageNet ships
    ``.JPEG``). ``.npy`` files hold one image, ``(H, W)`` or ``(H, W, C)``: uint8 in 0..255 or
    floats in [0, 1]. Every image is resized to ``size x size`` and given ``channels`` (3: RGB,
    1: grey) channels.
    """

    def __init__(self, root: str | os.PathLike, *, size: int, channels: int = 3) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.size = size
        self.channels = channels
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples = [
            (path, self.class_to_idx[name])
            for name in self.classes
            for path in sorted((self.root / name).rglob("*"))
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
        ]
        if not self.samples:
            raise ValueError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders under {self.root}; "
                "expected root/<class name>/<image>"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            image = _load_npy(path) if path.suffix.lower() == ".npy" else self._load_image(path)
        except Exception as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from exc
        return self._fit(image), label

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Every image and label in memory: ``(X, y)`` as float32 and int64 numpy arrays."""
        X = np.empty((len(self), self.channels, self.size, self.size), dtype=np.float32)
        y = np.empty(len(self), dtype=np.int64)
        for i in range(len(self)):
            image, y[i] = self[i]
            X[i] = image.numpy()
        return X, y

    def _load_image(self, path: Path) -> torch.Tensor:
        from PIL import Image

        with Image.open(path) as image:
            converted = image.convert("RGB" if self.channels == 3 else "L")
            resized = converted.resize((self.size, self.size), Image.Resampling.BILINEAR)
        pixels = np.asarray(resized, dtype=np.float32) / 255.0
        return torch.from_numpy(pixels.reshape(self.size, self.size, self.channels)).permute(
            2, 0, 1
        )

    def _fit(self, image: torch.Tensor) -> torch.Tensor:
        """Resize a ``(C, H, W)`` image and match the channel count (``.npy`` needs both)."""
        if image.shape[0] != self.channels:
            if self.channels == 3:
                image = image.expand(3, -1, -1)
            else:
                image = torch.tensordot(torch.tensor(_LUMA), image, dims=1)[None]
        if image.shape[1:] != (self.size, self.size):
            image = F.interpolate(
                image[None], size=(self.size, self.size), mode="bilinear", antialias=True
            )[0]
        return image.contiguous()


def _load_npy(path: Path) -> torch.Tensor:
    array = np.load(path, allow_pickle=False)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise ValueError(f"expected shape (H, W), (H, W, 1) or (H, W, 3), got {array.shape}")
    pixels = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1)
