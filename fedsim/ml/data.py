"""Data for training for real: the bundled digits set, image folders on disk, synthetic ImageNet.

- ``load_digits_split``: scikit-learn's 8x8 handwritten digits (1797 images, shipped with
  scikit-learn, so no download), split per class with a seeded numpy generator so the split is
  the same on every platform and scikit-learn version.
- ``ImageFolderDataset``: an ImageNet-style tree ``root/<class name>/**/*.{jpg,jpeg,png,npy}``
  for users who hold a real data set; images are decoded with Pillow (imported only when an
  image file is read) and resized to a square.
- ``synthetic_imagenet``: random tensors of ImageNet's shape, for timing where the pixels do
  not matter.

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

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".npy")
DIGITS_MAX = 16.0  # the digits set counts ink per 4x4 block of a 32x32 bitmap: 0..16
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, the weights Pillow's "L" conversion uses


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
    y = digits.target.astype(np.int64)
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
