"""The distorted-digits example: its data pipeline on a few samples and one very short run."""

import json

import numpy as np
import pytest

from examples import distorted_digits as dd


def _disk(radius=10.0, size=dd.FRAME):
    """A centred disk of ones on the frame `(1, size, size)` (its pixel centres inside `radius`)."""
    centre = (size - 1) / 2.0
    y, x = np.mgrid[:size, :size] - centre
    return (x**2 + y**2 <= radius**2).astype("float32")[None]


@pytest.fixture(scope="module")
def digits():
    return dd.load_digits_frames()


def test_sklearn_digits_sit_centred_on_a_28x28_frame(digits):
    x_train, y_train, x_test, y_test = digits
    assert x_train.shape == (1347, 28, 28) and x_test.shape == (450, 28, 28)
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))
    assert x_train.min() >= 0.0 and x_train.max() <= 1.0
    # The 8x8 digit is upscaled to the central 20x20 pixels: the outer 3 pixels read only zeros.
    frame = np.pad(np.ones((22, 22)), 3) > 0
    assert np.all(x_train[:, ~frame] == 0.0)
    assert np.all(x_train.sum(axis=(1, 2)) > 10.0)


def test_mnist5k_is_mlxtends_5000_real_digits_at_native_resolution():
    x_train, y_train, x_test, y_test = dd.load_digits_frames(data="mnist5k")
    assert x_train.shape == (4000, 28, 28) and x_test.shape == (1000, 28, 28)
    assert x_train.dtype == np.float32 and x_train.min() == 0.0 and x_train.max() == 1.0
    # 500 digits per class, split 400 / 100 (stratified).
    assert np.all(np.bincount(y_train) == 400) and np.all(np.bincount(y_test) == 100)
    # MNIST centres each digit's mass on the frame: the mean image's centroid is its centre.
    mean = x_train.mean(axis=0)
    rows, cols = np.mgrid[:28, :28]
    centroid = np.array([(rows * mean).sum(), (cols * mean).sum()]) / mean.sum()
    np.testing.assert_allclose(centroid, [13.5, 13.5], atol=1.0)
    assert dd.distort(x_test[:3], "RTS", np.random.default_rng(0)).shape == (3, 42, 42, 1)


def test_unknown_dataset_raises():
    with pytest.raises(ValueError, match="`data`"):
        dd.load_digits_frames(data="cifar")


def test_mnist_file_goes_through_the_same_pipeline(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mnist.npz"
    arrays = {
        "x_train": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "y_train": np.arange(6, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "y_test": np.arange(3, dtype=np.uint8),
    }
    np.savez(path, **arrays)
    x_train, y_train, x_test, y_test = dd.load_digits_frames(path)
    np.testing.assert_allclose(x_train, arrays["x_train"] / 255.0, rtol=1e-6)
    assert x_test.dtype == np.float32 and list(y_test) == [0, 1, 2]
    assert dd.distort(x_train, "RTS", rng).shape == (6, 42, 42, 1)


@pytest.mark.parametrize("distortion, size", [("R", 28), ("RTS", 42), ("P", 28), ("E", 28)])
def test_distortions_are_reproducible_from_the_seed(digits, distortion, size):
    images = digits[0][:5]
    first = dd.distort(images, distortion, np.random.default_rng(1))
    again = dd.distort(images, distortion, np.random.default_rng(1))
    other = dd.distort(images, distortion, np.random.default_rng(2))
    assert first.shape == (5, size, size, 1)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_rotation_leaves_a_centred_disk_unchanged():
    disk = np.repeat(_disk(), 4, axis=0)
    rotated = dd.distort(disk, "R", np.random.default_rng(0))[..., 0]
    # Only the interpolated rim may change.
    assert np.mean(np.abs(rotated - disk) > 0.5) < 0.03
    np.testing.assert_allclose(rotated.sum(axis=(1, 2)), disk.sum(axis=(1, 2)), rtol=0.03)


def test_rts_keeps_the_scaled_digit_inside_the_canvas():
    # The translation keeps the digit's 20x20 box on the canvas: a disk of radius 8 stays clear of
    # the border rows and columns, and scale s in [0.7, 1.2] gives it an area of pi (8 s)^2.
    disk = np.repeat(_disk(radius=8.0), 64, axis=0)
    canvas = dd.distort(disk, "RTS", np.random.default_rng(0))[..., 0]
    mass = canvas.sum(axis=(1, 2))
    assert np.all(mass > 0.9 * np.pi * 5.6**2) and np.all(mass < 1.1 * np.pi * 9.6**2)
    assert np.all(canvas[:, [0, -1], :] < 0.5) and np.all(canvas[:, :, [0, -1]] < 0.5)
    assert np.ptp(mass) > 0.3 * mass.mean()  # the scale does vary


def test_homographies_map_the_corners_to_their_targets():
    corners = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    targets = corners[None] + np.random.default_rng(0).normal(0.0, 0.2, (3, 4, 2))
    h = dd._homographies(corners, targets)
    mapped = np.einsum("bij,kj->bki", h, np.concatenate([corners, np.ones((4, 1))], -1))
    np.testing.assert_allclose(mapped[..., :2] / mapped[..., 2:], targets, atol=1e-10)


def test_unknown_distortion_raises(digits):
    with pytest.raises(ValueError, match="`distortion`"):
        dd.distort(digits[0][:1], "shear", np.random.default_rng(0))


@pytest.mark.parametrize("size", [28, 42])
def test_cnn_is_matched_to_the_st_cnn_size(size):
    target = dd.build_st_cnn(size).count_params()
    assert abs(dd.matched_cnn(size, target).count_params() - target) < 0.01 * target


def test_short_run_prints_the_table_and_writes_figure_and_json(tmp_path, capsys):
    dd.main(
        ["--distortions", "RTS", "--epochs", "1", "--train-copies", "1", "--test-copies", "1"]
        + ["--max-train", "64", "--out", str(tmp_path)]
    )
    report = json.loads((tmp_path / "results.json").read_text())
    row = report["results"]["RTS"]
    assert report["settings"]["train_digits"] == 64
    assert 0.0 <= row["cnn_error"] <= 100.0 and 0.0 <= row["st_cnn_error"] <= 100.0
    assert abs(row["cnn_params"] - row["st_cnn_params"]) < 0.01 * row["st_cnn_params"]
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| ST-CNN |" in capsys.readouterr().out


def test_quick_st_cnn_returns_a_trained_model_and_test_data():
    model, (x_test, y_test) = dd.train_quick_st_cnn(epochs=1, train_copies=1)
    assert x_test.shape == (450, 42, 42, 1) and y_test.shape == (450,)
    assert model.predict(x_test[:32], verbose=0).shape == (32, 10)
    # Training moved the transformer away from its identity start (a zero regression kernel).
    assert np.any(model.get_layer("spatial_transformer").regression.kernel.numpy() != 0.0)
