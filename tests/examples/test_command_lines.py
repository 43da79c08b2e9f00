"""Every example's command line: each flag checked before any work starts (one line naming the
flag, exit status 2, nothing written), and no example writes into what it did not create."""

import pytest

from examples import distorted_digits, multiworker, outputs, quickstart, rectify, register
from examples.arguments import integer
from examples.web import __main__ as web


def _web(argv):
    # A --model that exists (this file); every refusal tested here comes before it is read.
    return web.main(["--model", __file__, *argv])


MAINS = {
    "register": register.main,
    "distorted_digits": distorted_digits.main,
    "quickstart": quickstart.main,
    "multiworker": multiworker.main,
    "web": _web,
    "rectify": rectify.main,
}

BAD_FLAGS = [
    ("register", "--pairs", "0"),
    ("register", "--pairs", "-1"),
    ("register", "--test-pairs", "0"),
    ("register", "--steps", "-1"),
    ("register", "--seed", "-1"),
    ("register", "--epochs", "0"),
    ("register", "--epochs", "-1"),
    ("register", "--epochs", "many"),
    ("distorted_digits", "--epochs", "0"),
    ("distorted_digits", "--train-copies", "0"),
    ("distorted_digits", "--test-copies", "-1"),
    ("distorted_digits", "--max-train", "0"),
    ("distorted_digits", "--seed", "-1"),
    ("distorted_digits", "--transform", "warp"),
    ("quickstart", "--epochs", "0"),
    ("quickstart", "--train-copies", "-1"),
    ("quickstart", "--epochs", "1.5"),
    ("multiworker", "--workers", "0"),
    ("multiworker", "--workers", "-1"),
    ("multiworker", "--epochs", "0"),
    ("multiworker", "--batch-size", "0"),
    ("multiworker", "--learning-rate", "-1"),
    ("multiworker", "--learning-rate", "nan"),
    ("multiworker", "--max-train", "0"),
    ("multiworker", "--seed", "-1"),
    ("multiworker", "--backend", "torch"),
    ("multiworker", "--cluster-timeout", "0"),
    ("rectify", "--train-strips", "0"),
    ("rectify", "--train-strips", "-1"),
    ("rectify", "--test-strips", "0"),
    ("rectify", "--epochs", "0"),
    ("rectify", "--epochs", "many"),
    ("rectify", "--seed", "-1"),
    ("web", "--samples", "0"),
    ("web", "--samples", "-1"),
    ("web", "--samples", "many"),
    ("web", "--model", "missing.keras"),
]


@pytest.mark.parametrize("example, flag, value", BAD_FLAGS)
def test_a_bad_flag_is_one_line_naming_it_and_nothing_is_written(
    example, flag, value, tmp_path, capsys
):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        MAINS[example](["--out", str(out), flag, value])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"argument {flag}" in lines[0] and repr(value) in lines[0], lines
    assert not out.exists()


def test_integer_flags_name_their_lower_bound():
    with pytest.raises(Exception, match="expected an integer >= 1; received '0'"):
        integer(1)("0")
    assert integer(0)("0") == 0


@pytest.mark.parametrize("example", sorted(MAINS))
def test_a_foreign_directory_or_a_file_is_refused_and_left_alone(example, tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert MAINS[example](["--out", str(foreign)]) == 2
    assert "did not create" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert (foreign / "notes.txt").read_text() == "mine"
    a_file = tmp_path / "file"
    a_file.write_text("keep")
    assert MAINS[example](["--out", str(a_file)]) == 2
    assert "must be a directory" in capsys.readouterr().err and a_file.read_text() == "keep"


def test_an_example_claims_only_its_own_directories(tmp_path):
    out = outputs.claim_output(tmp_path / "run", "register")
    (out / "figure.png").write_text("")
    assert outputs.claim_output(out, "register") == out  # a rerun of the same example
    with pytest.raises(ValueError, match="did not create"):
        outputs.claim_output(out, "quickstart")
    # --force writes into a foreign directory without removing anything there.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    outputs.claim_output(foreign, "register", force=True)
    outputs.write_text(foreign / "results.md", "table")
    assert sorted(p.name for p in foreign.iterdir()) == [
        outputs.MARKER,
        "notes.txt",
        "results.md",
    ]


def test_a_failed_write_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")

    def fail(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        outputs.write_atomically(target, fail)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "results.json"
    ]
