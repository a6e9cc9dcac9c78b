"""Data loading: the digits split, image folders on disk, synthetic ImageNet tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedsim.ml.data import ImageFolderDataset, load_digits_split, synthetic_imagenet


def write_png(path: Path, value: int, size: tuple[int, int] = (12, 10)) -> None:
    """A flat RGB image of grey level ``value``; flat so that resizing keeps the value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def test_digits_split_shapes_dtypes_and_range() -> None:
    # Execute
    X_train, y_train, X_test, y_test = load_digits_split(test_fraction=0.2, seed=0)

    # Assert
    assert X_train.shape[1:] == X_test.shape[1:] == (1, 8, 8)
    assert X_train.dtype == X_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    assert len(X_train) + len(X_test) == 1797
    assert len(X_train) == len(y_train) and len(X_test) == len(y_test)
    assert X_train.min() == 0.0 and X_train.max() == 1.0
    assert X_test.min() >= 0.0 and X_test.max() <= 1.0


def test_digits_split_is_stratified_and_seeded() -> None:
    # Prepare
    all_labels = np.concatenate(load_digits_split(seed=0)[1::2])
    class_sizes = np.bincount(all_labels)

    # Execute
    _, y_train, X_test, y_test = load_digits_split(test_fraction=0.2, seed=0)
    _, _, X_test_again, _ = load_digits_split(test_fraction=0.2, seed=0)
    _, _, X_test_other, _ = load_digits_split(test_fraction=0.2, seed=1)

    # Assert: each class gives the rounded fifth of its images to the test set.
    np.testing.assert_array_equal(np.bincount(y_test), np.round(0.2 * class_sizes))
    np.testing.assert_array_equal(np.bincount(y_train) + np.bincount(y_test), class_sizes)
    np.testing.assert_array_equal(X_test, X_test_again)
    assert not np.array_equal(X_test, X_test_other)


def test_image_folder_maps_sorted_class_names_to_indices(tmp_path: Path) -> None:
    # Prepare: class folders written out of order, a nested file, an upper-case extension and
    # a non-image file that must be skipped.
    write_png(tmp_path / "zebra" / "a.png", 255)
    write_png(tmp_path / "cat" / "b.PNG", 0)
    write_png(tmp_path / "cat" / "nested" / "c.png", 51)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")

    # Execute
    dataset = ImageFolderDataset(tmp_path, size=4)

    # Assert
    assert dataset.classes == ["cat", "zebra"]
    assert dataset.class_to_idx == {"cat": 0, "zebra": 1}
    assert len(dataset) == 3
    assert [label for _, label in dataset.samples] == [0, 0, 1]
    image, label = dataset[2]
    assert (image.shape, image.dtype, label) == ((3, 4, 4), torch.float32, 1)
    torch.testing.assert_close(image, torch.ones(3, 4, 4))
    torch.testing.assert_close(dataset[1][0], torch.full((3, 4, 4), 0.2))


def test_image_folder_reads_npy_and_converts_channels(tmp_path: Path) -> None:
    # Prepare: an 8x8 uint8 grey array and a 6x6 float RGB array.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "a" / "grey.npy", np.full((8, 8), 255, dtype=np.uint8))
    np.save(tmp_path / "b" / "rgb.npy", np.full((6, 6, 3), 0.5, dtype=np.float32))
    write_png(tmp_path / "b" / "img.png", 102)

    # Execute
    rgb = ImageFolderDataset(tmp_path, size=4, channels=3)
    grey = ImageFolderDataset(tmp_path, size=4, channels=1)
    X, y = grey.to_arrays()

    # Assert
    torch.testing.assert_close(rgb[0][0], torch.ones(3, 4, 4))
    torch.testing.assert_close(rgb[2][0], torch.full((3, 4, 4), 0.5))
    assert (X.shape, X.dtype, y.dtype) == ((3, 1, 4, 4), np.float32, np.int64)
    np.testing.assert_allclose(X[:, 0, 0, 0], [1.0, 0.4, 0.5], rtol=1e-5)
    np.testing.assert_array_equal(y, [0, 1, 1])


def test_image_folder_rejects_missing_empty_and_unreadable(tmp_path: Path) -> None:
    # Prepare
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "bad" / "cat").mkdir(parents=True)
    (tmp_path / "bad" / "cat" / "broken.png").write_bytes(b"not a png")

    # Execute / Assert
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nowhere", size=4)
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(tmp_path / "empty", size=4)
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        ImageFolderDataset(tmp_path / "bad", size=4)[0]


def test_synthetic_imagenet_shape_range_and_seed() -> None:
    # Execute
    images, labels = synthetic_imagenet(3, size=32, num_classes=1000, seed=5)
    again, _ = synthetic_imagenet(3, size=32, num_classes=1000, seed=5)

    # Assert
    assert (images.shape, images.dtype) == ((3, 3, 32, 32), torch.float32)
    assert (labels.shape, labels.dtype) == ((3,), torch.int64)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert labels.min() >= 0 and labels.max() < 1000
    torch.testing.assert_close(images, again)
