"""Data for training for real: the bundled digits set, image folders on disk, synthetic sets.

- ``load_digits_split``: scikit-learn's 8x8 handwritten digits (1797 images, shipped with
  scikit-learn, so no download), split per class with a seeded numpy generator so the split is
  the same on every platform and scikit-learn version.
- ``synthetic_classification``: as many images as asked for, each its class's seeded prototype
  plus Gaussian noise: learnable, of any size, for federations larger than the digits allow.
- ``ImageFolderDataset``: an ImageNet-style tree ``root/<class name>/**/*.{jpg,jpeg,png,npy}``
  for users who hold a real data set; images are decoded with Pillow (imported only when an
  image file is read) and resized to a square.
- ``synthetic_imagenet``: random tensors of ImageNet's shape, for timing where the pixels do
  not matter.
- ``load_split`` and ``training_size``: the data set a workload names (``DATASETS``), split
  into training and test sets the same stratified, seeded way whichever it is.

Images come out as float32 ``(channels, height, width)`` in [0, 1]; labels as int64 class
indices.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from fedsim.core.workload import DatasetSpec

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".npy")
DIGITS_MAX = 16.0  # the digits set counts ink per 4x4 block of a 32x32 bitmap: 0..16
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, the weights Pillow's "L" conversion uses
DATASETS = ("digits", "synthetic", "image_folder")  # what ``workload.dataset.name`` may name
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
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = (digits.images / DIGITS_MAX).astype(np.float32)[:, None, :, :]
    return _stratified_split(X, digits.target.astype(np.int64), test_fraction, seed)


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
    else:
        raise ValueError(f"unknown data set {dataset.name!r}; known: {', '.join(DATASETS)}")
    return _stratified_split(X, y, test_fraction, seed)


def training_size(dataset: DatasetSpec, *, num_classes: int, test_fraction: float) -> int:
    """How many samples ``load_split`` puts in the training set, without reading any pixel.

    Raises ``ValueError`` for a data set it cannot split (an unknown name, an image folder
    with more classes than ``num_classes``, a split that holds out no test sample).
    """
    if dataset.name == "digits":
        from sklearn.datasets import load_digits

        labels = load_digits().target
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
