"""Data loading: the digits split, image folders on disk, the synthetic sets, and the split of
the data set a workload names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedsim.core.partition import dirichlet_partition, iid_partition
from fedsim.core.workload import DatasetSpec
from fedsim.ml import data
from fedsim.ml.data import (
    ImageFolderDataset,
    digits_arrays,
    load_digits_split,
    load_split,
    synthetic_classification,
    synthetic_imagenet,
    training_size,
)

SYNTHETIC = DatasetSpec(name="synthetic", samples=60_000, total_bytes=60_000 * 64)


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


@pytest.mark.parametrize("sklearn_found", [True, False], ids=["file", "load_digits"])
def test_digits_arrays_equal_scikit_learns_load_digits(
    sklearn_found: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the file read directly, or (no package found) scikit-learn's own loader.
    from sklearn.datasets import load_digits

    expected = load_digits()
    if not sklearn_found:
        monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    digits_arrays.cache_clear()

    # Execute
    try:
        images, target = digits_arrays()
    finally:
        digits_arrays.cache_clear()

    # Assert: the same values, dtypes and shapes, and read-only, since the process shares them.
    np.testing.assert_array_equal(images, expected.images, strict=True)
    np.testing.assert_array_equal(target, expected.target, strict=True)
    assert not images.flags.writeable and not target.flags.writeable


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


def test_synthetic_classification_shapes_range_and_balanced_labels() -> None:
    # Execute
    X, y = synthetic_classification(1003, num_classes=10, size=6, channels=3, seed=1)

    # Assert
    assert (X.shape, X.dtype) == ((1003, 3, 6, 6), np.float32)
    assert (y.shape, y.dtype) == ((1003,), np.int64)
    assert X.min() >= 0.0 and X.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(y), [101, 101, 101] + [100] * 7)


def test_synthetic_classification_is_determined_by_its_seed() -> None:
    # Execute
    X, y = synthetic_classification(500, num_classes=10, seed=3)
    X_again, y_again = synthetic_classification(500, num_classes=10, seed=3)
    X_more, _ = synthetic_classification(800, num_classes=10, seed=3)
    X_other, _ = synthetic_classification(500, num_classes=10, seed=4)

    # Assert: the same seed gives the same set, a larger set extends it, another seed differs.
    np.testing.assert_array_equal(X, X_again)
    np.testing.assert_array_equal(y, y_again)
    np.testing.assert_array_equal(X, X_more[:500])
    assert not np.array_equal(X, X_other)


def test_synthetic_classes_are_learnable_but_not_trivially() -> None:
    # Prepare
    X, y, X_test, y_test = load_split(
        DatasetSpec(name="synthetic", samples=5000, total_bytes=5000 * 64),
        input_size=8,
        channels=1,
        num_classes=10,
        seed=0,
    )

    # Execute: label each held-out sample with the class whose training mean is nearest.
    means = np.stack([X[y == c].mean(axis=0) for c in range(10)])
    distances = ((X_test[:, None] - means[None]) ** 2).reshape(len(X_test), 10, -1).sum(axis=2)
    accuracy = (distances.argmin(axis=1) == y_test).mean()

    # Assert: far above chance (10 %), yet the noise leaves errors to learn around.
    assert 0.8 < accuracy < 0.99


def test_synthetic_split_partitions_to_1000_clients_each_holding_samples() -> None:
    # Prepare
    X, y, X_test, y_test = load_split(
        SYNTHETIC, input_size=8, channels=1, num_classes=10, test_fraction=0.2, seed=0
    )

    # Execute
    iid = iid_partition(len(y), 1000, np.random.default_rng(0))
    skewed = dirichlet_partition(y, 1000, 0.5, rng=np.random.default_rng(0), min_size=1)

    # Assert
    assert (len(y), len(y_test)) == (48_000, 12_000)
    assert X.shape == (48_000, 1, 8, 8) and X_test.shape == (12_000, 1, 8, 8)
    assert len(y) == training_size(SYNTHETIC, num_classes=10, test_fraction=0.2)
    assert len(iid) == len(skewed) == 1000
    assert min(len(part) for part in iid) == 48
    assert min(len(part) for part in skewed) >= 1
    assert sum(len(part) for part in skewed) == len(y)


def write_class_folders(root: Path, per_class: int = 5) -> None:
    """Three classes of small PNGs (6x5 RGB), each image a different flat grey level."""
    for c, name in enumerate(["circle", "square", "triangle"]):
        for i in range(per_class):
            write_png(root / name / f"{i}.png", 40 * c + 5 * i, size=(6, 5))


def test_image_folder_split_is_grey_resized_stratified_and_seeded(tmp_path: Path) -> None:
    # Prepare
    write_class_folders(tmp_path)
    dataset = DatasetSpec(name="image_folder", samples=15, total_bytes=15 * 64, path=str(tmp_path))

    # Execute
    X, y, X_test, y_test = load_split(
        dataset, input_size=8, channels=1, num_classes=10, test_fraction=0.4, seed=0
    )
    again = load_split(dataset, input_size=8, channels=1, num_classes=10, test_fraction=0.4)
    other = load_split(dataset, input_size=8, channels=1, num_classes=10, test_fraction=0.4, seed=1)

    # Assert: two of each class's five images are held out, the same two under the same seed.
    assert X.shape == (9, 1, 8, 8) and X_test.shape == (6, 1, 8, 8)
    np.testing.assert_array_equal(np.bincount(y_test), [2, 2, 2])
    np.testing.assert_array_equal(np.bincount(y), [3, 3, 3])
    assert len(y) == training_size(dataset, num_classes=10, test_fraction=0.4)
    np.testing.assert_array_equal(X_test, again[2])
    assert not np.array_equal(X_test, other[2])


def test_image_folder_with_more_classes_than_the_model_or_no_path_is_refused(
    tmp_path: Path,
) -> None:
    # Prepare
    write_class_folders(tmp_path, per_class=1)
    folder = DatasetSpec(name="image_folder", samples=3, total_bytes=3 * 64, path=str(tmp_path))
    no_path = DatasetSpec(name="image_folder", samples=3, total_bytes=3 * 64)

    # Execute / Assert
    with pytest.raises(ValueError, match="3 class folders, more than the model's 2 classes"):
        training_size(folder, num_classes=2, test_fraction=0.2)
    with pytest.raises(ValueError, match="needs a path"):
        load_split(no_path, input_size=8, channels=1, num_classes=10)
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        training_size(
            DatasetSpec(name="mnist", samples=1, total_bytes=1), num_classes=10, test_fraction=0.2
        )
