"""The export command line: success, the no-overwrite and no-data-loss rules, one-line errors with a
non-zero exit, and the installed `stn-keras-export` / `python -m stn_keras.export` outside a checkout."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import export
from tests.export.models import custom_layer_model, sampler_model

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


def test_cli_failed_validation_exits_nonzero_and_writes_nothing(
    model_file, tmp_path, capsys, monkeypatch
):
    from stn_keras.export import runners

    def off_by_one(path, specs=None, names=None):
        run, runtime = runners.onnxruntime(path)
        return (lambda inputs: [o + 1.0 for o in run(inputs)]), runtime

    # An artifact whose every output is off by one: validation must refuse it.
    monkeypatch.setitem(runners.RUNNERS, "onnxruntime", off_by_one)
    status, _, err = _cli(capsys, "onnx", model_file, tmp_path / "m.onnx")
    _assert_one_line_error(status, err, "Validation failed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--atol", "0"),
        ("--atol", "-1"),
        ("--atol", "nan"),
        ("--atol", "tight"),
        ("--opset", "0"),
        ("--opset", "-1"),
        ("--opset", "99"),
        ("--opset", "eighteen"),
        ("--target", "tensorflow"),
        ("--target", "0"),
        ("--target", "litert-gpu"),  # a target of another format
    ],
)
def test_cli_a_bad_flag_is_a_one_line_usage_error_naming_it(
    model_file, tmp_path, capsys, flag, value
):
    with pytest.raises(SystemExit) as exit_info:
        export.main(["onnx", str(model_file), str(tmp_path / "m.onnx"), flag, value])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"argument {flag}" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_cli_target_refuses_an_opset_it_misreads_as_a_usage_error(model_file, tmp_path, capsys):
    argv = ["onnx-native", str(model_file), str(tmp_path / "m.onnx"), "--target", "tensorrt"]
    with pytest.raises(SystemExit) as exit_info:
        export.main([*argv, "--opset", "20"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "argument --opset" in lines[0] and "TensorRT" in lines[0], lines
    assert list(tmp_path.iterdir()) == []
    assert export.main(argv) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "for tensorrt" in out and "opset 19" in out


@pytest.fixture(scope="module")
def float16_model_file(tmp_path_factory):
    """A mixed-precision sampler: float16 images, which onnxruntime's GridSample does not take."""
    import keras

    import stn_keras

    images = keras.Input((4, 5, 1), name="images")
    theta = keras.layers.Dense(6, bias_initializer=keras.initializers.Constant([1, 0, 0, 0, 1, 0]))(
        keras.layers.Flatten()(images)
    )
    sampler = stn_keras.TransformSampler(output_size=(3, 3), dtype="mixed_float16")
    path = tmp_path_factory.mktemp("models") / "float16.keras"
    keras.Model(images, sampler([images, theta])).save(path)
    return path


def test_cli_native_export_says_which_samplers_stay_on_the_gather_path(
    float16_model_file, tmp_path, capsys
):
    target = tmp_path / "m.onnx"
    status, out, err = _cli(
        capsys, "onnx", float16_model_file, target, "--native-gridsample", "--atol", "1e-2"
    )
    assert status == 0, err
    assert "PASS" in out and "1 sampler: 0 GridSample (0 with AffineGrid)" in out
    assert "1 on the gather path (float16 images)" in out
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "stays on the gather path" in warnings[0], err
    # --require-native refuses instead, and writes nothing.
    refused = tmp_path / "refused.onnx"
    status, _, err = _cli(
        capsys, "onnx", float16_model_file, refused, "--native-gridsample", "--require-native"
    )
    _assert_one_line_error(status, err, "cannot be a native GridSample")
    assert not refused.exists()


def test_cli_native_export_counts_its_gridsamples(model_file, tmp_path, capsys):
    status, out, err = _cli(capsys, "onnx", model_file, tmp_path / "m.onnx", "--native-gridsample")
    assert status == 0 and "warning" not in err
    assert "1 sampler: 1 GridSample" in out and "gather path" not in out


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
        "tests.export.models",
    )
    assert status == 0, err
    assert "onnx-native" in out and "PASS" in out


def test_cli_no_validate_writes_and_says_so(model_file, tmp_path, capsys):
    status, out, err = _cli(capsys, "litert", model_file, tmp_path / "m.tflite", "--no-validate")
    assert status == 0, err
    assert "not validated" in out and "PASS" not in out
    assert (tmp_path / "m.tflite").stat().st_size > 0


# ---- nothing the user owns is ever lost -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["savedmodel", "onnx", "litert"])
@pytest.mark.parametrize("output", ["", ".", "..", "m.keras", "{cwd}"])
def test_cli_refuses_paths_it_cannot_own_and_loses_nothing(
    model_file, tmp_path, monkeypatch, capsys, fmt, output
):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    (work / "m.keras").write_bytes(model_file.read_bytes())
    monkeypatch.chdir(work)
    before = sorted((p.name, p.stat().st_size) for p in tmp_path.rglob("*"))
    status, out, err = _cli(capsys, fmt, "m.keras", output.format(cwd=work), "--force")
    _assert_one_line_error(
        status, err, "Refusing to write to" if output else "Output path is empty"
    )
    assert "PASS" not in out
    assert sorted((p.name, p.stat().st_size) for p in tmp_path.rglob("*")) == before


def test_cli_force_never_replaces_a_directory_holding_other_files(model_file, tmp_path, capsys):
    target = tmp_path / "out"
    target.mkdir()
    (target / "data.csv").write_text("1,2,3")
    status, _, err = _cli(capsys, "savedmodel", model_file, target, "--force")
    _assert_one_line_error(status, err, "not a SavedModel directory")
    assert [p.name for p in target.iterdir()] == ["data.csv"]


def test_api_refuses_an_empty_path_even_with_force(tmp_path, monkeypatch):
    from stn_keras.export import export_savedmodel

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    model = sampler_model([("bilinear", "zeros", False)], input_shape=(4, 5, 1), output_size=(3, 3))
    with pytest.raises(ValueError, match="Output path is empty"):
        export_savedmodel(model, "", force=True)
    with pytest.raises(ValueError, match="current directory"):
        export_savedmodel(model, ".", force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_onnx_checks_the_output_directory_before_converting(model_file, tmp_path, monkeypatch):
    from stn_keras.export import onnx as onnx_export

    def convert_must_not_run(*args, **kwargs):
        pytest.fail("converted before checking the output directory")

    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode)
    )
    monkeypatch.setattr(onnx_export, "convert", convert_must_not_run)
    model = sampler_model([("bilinear", "zeros", False)], input_shape=(4, 5, 1), output_size=(3, 3))
    with pytest.raises(PermissionError, match="is not writable"):
        onnx_export.export_onnx(model, tmp_path / "m.onnx")


def test_cli_reports_a_permission_error_as_such(model_file, tmp_path, monkeypatch, capsys):
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode)
    )
    status, _, err = _cli(capsys, "litert", model_file, tmp_path / "m.tflite")
    _assert_one_line_error(status, err, "is not writable")
    assert "conversion" not in err


# ---- the installed command line, outside the checkout ----------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """stn-keras installed from its wheel (no dependencies: they are this environment's) into a folder."""
    root = tmp_path_factory.mktemp("installed")
    source, wheels, target = root / "source", root / "wheels", root / "site"
    # Built from a copy, so that the build leaves nothing in the checkout.
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "stn_keras", source / "stn_keras", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        # Built as pip builds it for a user: in an isolated environment with pyproject's backend.
        [*pip, "wheel", "--no-deps", "-w", str(wheels), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("stn_keras-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def _run_elsewhere(installed, tmp_path, argv):
    """Run `argv` in a folder outside the checkout, with the installed package on the path."""
    work = tmp_path / "elsewhere"
    work.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(installed)}
    return subprocess.run(
        argv, cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.xdist_group("installed_cli")  # one worker builds the wheel
def test_installed_console_script_exports_outside_the_checkout(installed, model_file, tmp_path):
    # Where Python finds the package, without importing it (and TensorFlow with it).
    find = "import importlib.util as u; print(u.find_spec('stn_keras').origin)"
    where = _run_elsewhere(installed, tmp_path, [sys.executable, "-c", find])
    assert where.stdout.strip().startswith(str(installed)), where.stdout  # not the checkout's
    command = [sys.executable, str(installed / "bin" / "stn-keras-export")]
    result = _run_elsewhere(installed, tmp_path, [*command, "onnx", str(model_file), "m.onnx"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "PASS" in result.stdout and (tmp_path / "elsewhere" / "m.onnx").exists()
    # One line of ours on stdout; no Python warnings or deprecation notices on stderr. (TensorFlow's
    # C++ start-up lines on stderr, "WARNING: All log messages before absl::InitializeLog() ...",
    # print at its import whatever TF_CPP_MIN_LOG_LEVEL says: tensorflow/tensorflow#100442.)
    assert result.stdout.strip().count("\n") == 0, result.stdout
    assert "Instructions for updating" not in result.stderr
    assert "Warning" not in result.stderr, result.stderr[-2000:]


@pytest.mark.xdist_group("installed_cli")
def test_installed_module_runs_as_python_m_outside_the_checkout(installed, tmp_path):
    # The same `main` as the console script's (exporting through it is tested above): run as a
    # module, a flag error is one line naming the flag, and nothing is written.
    argv = [sys.executable, "-m", "stn_keras.export", "onnx", "m.keras", "m.onnx", "--opset", "x"]
    wrong = _run_elsewhere(installed, tmp_path, argv)
    assert wrong.returncode == 2, wrong.stderr[-2000:]
    last = wrong.stderr.splitlines()[-1]
    assert last.startswith("stn-keras-export onnx: error: argument --opset"), wrong.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == []
