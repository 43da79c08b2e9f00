"""The rectify example: its strips, its distortions (against OpenCV and the strip itself), and one
tiny run that trains both readers and exports the ST reader."""

import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import stn_keras
from examples import rectify
from examples.distorted_digits import load_digits_frames


@pytest.fixture(scope="module")
def digits():
    x_train, y_train, _, _ = load_digits_frames(data="mnist5k")
    return x_train[:200], y_train[:200]


def test_strips_hold_the_picked_digits_side_by_side_then_blanks(digits):
    frames, labels = digits
    strips, sequences = rectify.compose_strips(frames, labels, 50, np.random.default_rng(3))
    assert strips.shape == (50, 32, 100, 1) and sequences.shape == (50, 5)
    lengths = np.sum(sequences != rectify.BLANK, -1)
    assert set(lengths) == {3, 4, 5}
    centres = frames[:, :, 4:24]  # the central 20 columns of each 28x28 frame
    for strip, sequence, length in zip(strips[..., 0], sequences, lengths, strict=True):
        assert np.all(sequence[length:] == rectify.BLANK)  # blanks only after the digits
        assert not strip[:2].any() and not strip[30:].any()

        def holds_its_digits(left, strip=strip, sequence=sequence, length=length):
            slots = [strip[2:30, left + 20 * k : left + 20 * k + 20] for k in range(length)]
            rest = np.delete(strip, np.s_[left : left + 20 * length], axis=1)
            return not rest.any() and all(
                any(np.array_equal(slot, c) for c in centres[labels == label])
                for slot, label in zip(slots, sequence, strict=False)
            )

        # Some left offset of 0-4 pixels (within the strip) puts every slot on a digit of its label.
        assert any(holds_its_digits(left) for left in range(min(4, 100 - 20 * length) + 1))


def test_the_perspective_maps_the_canvas_corners_as_opencv_does():
    rng = np.random.default_rng(0)
    noise = rng.uniform(-0.2, 0.2, (3, 4, 2))
    corners = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    ours = rectify._homographies(noise)
    for h, moved in zip(ours, corners + noise, strict=True):
        expected = cv2.getPerspectiveTransform(corners.astype("float32"), moved.astype("float32"))
        # OpenCV solves the same 8x8 system in float64 from float32 points.
        np.testing.assert_allclose(h, expected, rtol=0, atol=1e-6)


def test_undistorted_canvas_shows_the_strip_centred_at_its_own_resolution(digits):
    strips, _ = rectify.compose_strips(*digits, 4, np.random.default_rng(1))
    grids = rectify.distortion_grids(4, np.random.default_rng(2), strength=0.0)
    canvas = stn_keras.grid_sample(strips, grids).numpy()
    # Canvas pixel (i, j) reads strip pixel (i - 8, j - 14) exactly, up to float32 rounding of
    # the coordinates (|x| <= 1.3, ~100 pixels per unit): a few 1e-6 of a unit weight.
    np.testing.assert_allclose(canvas[:, 8:40, 14:114], strips, rtol=0, atol=3e-5)
    outside = np.ones(rectify.CANVAS, bool)
    outside[8:40, 14:114] = False
    assert np.max(np.abs(canvas[:, outside])) <= 3e-5


def test_distortions_come_from_the_seed(digits):
    first = rectify.make_split(*digits, 6, np.random.default_rng(5))
    again = rectify.make_split(*digits, 6, np.random.default_rng(5))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    canvases, strips, _ = first
    assert canvases.shape == (6, 48, 128, 1)
    # Bent and seen in perspective: no canvas holds its strip at the undistorted place.
    assert all(
        not np.allclose(c[8:40, 14:114], s, atol=0.1) for c, s in zip(canvases, strips, strict=True)
    )


def test_sequence_accuracy_counts_whole_sequences_and_positions():
    sequences = np.array([[1, 2, 3, 10, 10], [4, 5, 6, 7, 10]])
    logits = np.eye(11)[sequences] * 5.0
    assert rectify.sequence_accuracy(logits, sequences) == (100.0, 100.0)
    logits[1, 4] = np.eye(11)[3]  # one wrong position in the second sequence
    assert rectify.sequence_accuracy(logits, sequences) == (50.0, 90.0)


def test_readers_have_matched_sizes_and_the_transformer_starts_as_identity():
    st_reader = rectify.build_st_reader()
    cnn = rectify.matched_cnn_reader(st_reader.count_params())
    assert abs(cnn.count_params() - st_reader.count_params()) / st_reader.count_params() < 0.01
    assert st_reader.output_shape == cnn.output_shape == (None, 5, 11)
    # Canvases that hold their own pixel coordinates (x, y): bilinear sampling reads a ramp exactly,
    # so the rectified view shows where each output pixel reads, in pixels.
    rows, cols = np.mgrid[:48, :128].astype("float32")
    canvas = np.stack([cols, rows], -1)[None]
    transformer = stn_keras.SpatialTransformer(
        localization=rectify.rectifier_localization(),
        output_size=rectify.STRIP,
        transform="tps",
        transform_options={"control_points": "aster"},
    )
    read = transformer(canvas).numpy()[0]
    # At initialisation the fiducials sit where ASTER puts them: the 32x100 view of the whole
    # canvas, which reads pixel ((2 j + 1) 128 / 100 - 1) / 2 of column j (align_corners off).
    expected_x = ((2 * np.arange(100) + 1) * 128 / 100 - 1) / 2
    expected_y = ((2 * np.arange(32) + 1) * 48 / 32 - 1) / 2
    # The float32 solve of the 23x23 spline system (condition number 1.6e3) moves the points
    # by up to cond * 2**-24 normalised units, times 64 pixels per unit: 6e-3 pixels.
    np.testing.assert_allclose(read[..., 0], np.broadcast_to(expected_x, (32, 100)), atol=6e-3)
    np.testing.assert_allclose(
        read[..., 1], np.broadcast_to(expected_y[:, None], (32, 100)), atol=6e-3
    )


def test_a_tiny_run_trains_both_readers_and_exports_a_validated_native_graph(tmp_path):
    out = tmp_path / "run"
    report = rectify.run(train_strips=64, test_strips=32, epochs=1, out=out, verbose=0)
    names = sorted(p.name for p in out.iterdir())
    assert names == [".stn-keras-example", "figure.png", "results.json", "st_reader.onnx"]
    assert json.loads((out / "results.json").read_text()) == report
    for name in ("cnn", "st_reader"):
        row = report["results"][name]
        assert 0.0 <= row["sequence_accuracy"] <= row["position_accuracy"] <= 100.0
    exported = report["export"]
    assert exported["native_gridsample"] and exported["max_abs_error"] <= exported["tolerance"]
    graph = onnx.load(out / "st_reader.onnx").graph
    assert "GridSample" in {node.op_type for node in graph.node}
    session = ort.InferenceSession(out / "st_reader.onnx", providers=["CPUExecutionProvider"])
    canvas = np.zeros((3, 48, 128, 1), "float32")
    (logits,) = session.run(None, {session.get_inputs()[0].name: canvas})
    assert logits.shape == (3, 5, 11) and np.all(np.isfinite(logits))
