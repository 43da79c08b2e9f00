"""The staged-write rules shared by every exporter: nothing lost, nothing half-written."""

import pathlib

import pytest

from stn_keras.export.files import check_target, staged_output


def test_staged_file_appears_only_after_the_block(tmp_path):
    target = tmp_path / "a.onnx"
    with staged_output(target) as staging:
        # Beside the target, hidden, keeping the suffix (some converters insist on it).
        staging = pathlib.Path(staging)
        assert (
            staging.parent == tmp_path
            and staging.name.startswith(".")
            and staging.suffix == ".onnx"
        )
        assert staging != target
        staging.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.onnx"]


def test_failure_inside_the_block_removes_the_staging_and_keeps_the_target(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with staged_output(target, force=True) as staging:
            pathlib.Path(staging).mkdir()
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (target / "keep").read_text() == "old"


def test_existing_target_needs_force(tmp_path):
    target = tmp_path / "a.tflite"
    target.write_text("old")
    with pytest.raises(FileExistsError, match="already exists"):
        with staged_output(target):
            pytest.fail("the block must not run")
    assert target.read_text() == "old"


def test_force_replaces_a_directory(tmp_path):
    target = tmp_path / "sm"
    target.mkdir()
    (target / "old").write_text("old")
    with staged_output(target, force=True) as staging:
        pathlib.Path(staging).mkdir()
        (pathlib.Path(staging) / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["sm"]


def test_writing_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="wrote nothing"):
        with staged_output(tmp_path / "a.onnx"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_missing_output_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_target(tmp_path / "missing" / "a.onnx", force=False)
