"""The registration example on a tiny configuration: it trains both models, writes its figure and
table, and the volume run exports to ONNX and passes in onnxruntime."""

import json

import numpy as np

from examples import register


def test_digit_pairs_are_two_digits_of_one_class():
    moving, fixed = register.digit_pairs(6, np.random.default_rng(0))
    assert moving.shape == fixed.shape == (6, 28, 28, 1)
    assert moving.min() >= 0.0 and moving.max() <= 1.0


def test_tiny_2d_run_writes_the_figure_and_the_table_and_a_rerun_reuses_the_directory(tmp_path):
    # One held-out pair: the figure has a single row.
    summary = register.run(tmp_path, pairs=16, test_pairs=1, epochs=1, steps=2, verbose=0)
    assert len(summary["results"]) == 2  # the velocity model and the displacement baseline
    assert (tmp_path / "figure.png").stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text()) == summary
    table = (tmp_path / "results.md").read_text()
    for name, result in summary["results"].items():
        assert name in table
        assert np.isfinite(list(result.values())).all()
        assert 0.0 <= result["nonpositive_jacobian_percent"] <= 100.0
    # Its own directory: a rerun replaces its files.
    register.run(tmp_path, pairs=8, test_pairs=1, epochs=1, steps=1, verbose=0, baseline=False)
    assert (tmp_path / "figure.png").stat().st_size > 0
    assert list(json.loads((tmp_path / "results.json").read_text())["results"]) == [
        "velocity + IntegrateVelocity"
    ]


def test_tiny_volume_run_exports_to_onnx_and_passes(tmp_path):
    # The volume's baseline adds nothing the 2-D run does not test: left out, for the budget.
    summary = register.run(
        tmp_path, volume=True, pairs=8, test_pairs=4, epochs=1, steps=2, verbose=0, baseline=False
    )
    assert list(summary["results"]) == ["velocity + IntegrateVelocity"]
    assert summary["onnx"]["passed"] and summary["onnx"]["max_abs_error"] < 1e-4
    assert (tmp_path / "registration.onnx").exists()
    assert summary["shape"] == [16, 16, 16, 1]
