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
    (target / "saved_model.pb").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with staged_output(target, force=True, kind="savedmodel") as staging:
            pathlib.Path(staging).mkdir()
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (target / "saved_model.pb").read_text() == "old"


def test_existing_target_needs_force(tmp_path):
    target = tmp_path / "a.tflite"
    target.write_text("old")
    with pytest.raises(FileExistsError, match="already exists"):
        with staged_output(target):
            pytest.fail("the block must not run")
    assert target.read_text() == "old"


def test_force_replaces_a_savedmodel_directory(tmp_path):
    target = tmp_path / "sm"
    (target / "variables").mkdir(parents=True)
    (target / "saved_model.pb").write_text("old")
    with staged_output(target, force=True, kind="savedmodel") as staging:
        pathlib.Path(staging).mkdir()
        (pathlib.Path(staging) / "saved_model.pb").write_text("new")
    assert [p.name for p in target.iterdir()] == ["saved_model.pb"]
    assert (target / "saved_model.pb").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["sm"]


def test_writing_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="wrote nothing"):
        with staged_output(tmp_path / "a.onnx"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_missing_output_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_target(tmp_path / "missing" / "a.onnx", force=False)


# ---- paths an exporter cannot safely own --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "savedmodel"])
@pytest.mark.parametrize("path", ["", " ", ".", "..", "./", "sub/.."])
def test_empty_current_and_ancestor_paths_are_refused_even_with_force(
    tmp_path, monkeypatch, path, kind
):
    (tmp_path / "sub").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work if path != "sub/.." else tmp_path / "sub")
    with pytest.raises(ValueError, match="empty|current directory or one of its ancestors"):
        with staged_output(path, force=True, kind=kind):
            pytest.fail("the block must not run")
    assert (work / "notes.txt").read_text() == "mine"


def test_root_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="ancestors"):
        check_target("/", force=True, kind="savedmodel")


@pytest.mark.parametrize("kind", ["file", "savedmodel"])
def test_path_that_is_or_holds_the_input_is_refused(tmp_path, kind):
    model = tmp_path / "models" / "m.keras"
    model.parent.mkdir()
    model.write_text("model")
    for target in (model, model.parent, tmp_path):
        with pytest.raises(ValueError, match="is or holds the input"):
            check_target(target, force=True, kind=kind, inputs=[model])
    assert model.read_text() == "model"


def test_force_never_replaces_a_directory_that_is_not_a_savedmodel(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "saved_model.pb").write_text("old")
    (target / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="not a SavedModel directory"):
        with staged_output(target, force=True, kind="savedmodel"):
            pytest.fail("the block must not run")
    assert (target / "thesis.tex").read_text() == "years of work"


def test_force_never_replaces_a_directory_with_a_file(tmp_path):
    target = tmp_path / "m.onnx"
    target.mkdir()
    (target / "keep").write_text("keep")
    with pytest.raises(ValueError, match="is a directory, not a file"):
        check_target(target, force=True, kind="file")
    assert (target / "keep").read_text() == "keep"


def test_unwritable_output_directory_is_a_permission_error(tmp_path, monkeypatch):
    import os

    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode)
    )
    with pytest.raises(PermissionError, match="is not writable"):
        check_target(tmp_path / "m.onnx", force=False)
