"""`python -m export`: success, the no-overwrite rule, and one-line errors with a non-zero exit."""

import os
import pathlib
import subprocess
import sys

import pytest

import export
from stn_keras.testing.export import custom_layer_model, sampler_model

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "sampler.keras"
    sampler_model([("bilinear", "zeros", True)], input_shape=(4, 5, 1), output_size=(3, 3)).save(
        path
    )
    return path


def _cli(capsys, *argv):
    status = export.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def _assert_one_line_error(status, err, match):
    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert match in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("fmt", "name", "extra"),
    [
        ("onnx", "m.onnx", ["--native-gridsample"]),
        ("litert", "m.tflite", []),
        ("savedmodel", "sm", []),
    ],
)
def test_cli_exports_and_prints_passing_report(model_file, tmp_path, capsys, fmt, name, extra):
    status, out, err = _cli(capsys, fmt, model_file, tmp_path / name, *extra)
    assert status == 0, err
    assert "PASS" in out and "batch 1" in out and "batch 5" in out
    assert (tmp_path / name).exists()
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left over


def test_cli_refuses_to_overwrite_without_force(model_file, tmp_path, capsys):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    _assert_one_line_error(*_cli(capsys, "onnx", model_file, target)[::2], "already exists")
    assert target.read_bytes() == b"old"
    status, out, _ = _cli(capsys, "onnx", model_file, target, "--force")
    assert status == 0 and "PASS" in out
    assert target.read_bytes() != b"old"


def test_cli_failed_validation_exits_nonzero_and_writes_nothing(model_file, tmp_path, capsys):
    status, _, err = _cli(capsys, "onnx", model_file, tmp_path / "m.onnx", "--atol", "-1")
    _assert_one_line_error(status, err, "Validation failed")
    assert list(tmp_path.iterdir()) == []


def test_cli_missing_model_file(tmp_path, capsys):
    status, _, err = _cli(capsys, "onnx", tmp_path / "nope.keras", tmp_path / "m.onnx")
    _assert_one_line_error(status, err, "does not exist")


def test_cli_corrupt_model_file(tmp_path, capsys):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    status, _, err = _cli(capsys, "litert", bad, tmp_path / "m.tflite")
    _assert_one_line_error(status, err, "not a valid `.keras` archive")


def test_cli_non_keras_model_file(tmp_path, capsys):
    other = tmp_path / "weights.h5"
    other.write_bytes(b"\x89HDF\r\n")
    status, _, err = _cli(capsys, "savedmodel", other, tmp_path / "sm")
    _assert_one_line_error(status, err, "is not a Keras model file")


def test_cli_invalid_opset(model_file, tmp_path, capsys):
    status, _, err = _cli(capsys, "onnx", model_file, tmp_path / "m.onnx", "--opset", "99")
    _assert_one_line_error(status, err, "Invalid value for argument `opset`")


def test_cli_unknown_format_is_a_usage_error(model_file, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        export.main(["tfjs", str(model_file), str(tmp_path / "m")])
    assert exit_info.value.code == 2


def test_cli_unknown_custom_layer_in_a_fresh_process(tmp_path):
    model = tmp_path / "custom.keras"
    custom_layer_model().save(model)
    command = [sys.executable, "-m", "export", "onnx", str(model), str(tmp_path / "m.onnx")]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "unknown custom object" in errors[0], result.stderr[-2000:]
    assert "ExportTestSampler" in errors[0]
    assert not (tmp_path / "m.onnx").exists()


def test_cli_custom_module_registers_the_layer(tmp_path, capsys):
    model = tmp_path / "custom.keras"
    custom_layer_model().save(model)
    status, out, err = _cli(
        capsys,
        "onnx",
        model,
        tmp_path / "m.onnx",
        "--native-gridsample",
        "--custom-module",
        "stn_keras.testing.export",
    )
    assert status == 0, err
    assert "onnx-native" in out and "PASS" in out


def test_cli_no_validate_writes_and_says_so(model_file, tmp_path, capsys):
    status, out, err = _cli(capsys, "litert", model_file, tmp_path / "m.tflite", "--no-validate")
    assert status == 0, err
    assert "not validated" in out and "PASS" not in out
    assert (tmp_path / "m.tflite").stat().st_size > 0
