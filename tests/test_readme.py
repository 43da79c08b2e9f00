"""The README's code runs as written: every fenced python block marked `<!-- readme-test: run -->`."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- readme-test: run -->"
_BLOCK = re.compile(re.escape(MARKER) + r"\s*\n```python\n(.*?)\n```", re.DOTALL)


def _marked_blocks():
    text = README.read_text()
    blocks = _BLOCK.findall(text)
    # A marker not followed by a python block would silently skip a snippet.
    assert len(blocks) == text.count(MARKER), (
        "a readme-test marker is not followed by a python block"
    )
    return blocks


def test_readme_has_marked_snippets():
    assert _marked_blocks(), f"no {MARKER} python block in {README}"


@pytest.mark.parametrize("index", range(len(_marked_blocks())))
def test_readme_snippet_runs_as_written(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snippets may write files
    code = compile(_marked_blocks()[index], f"README.md snippet {index}", "exec")
    exec(code, {"__name__": "__readme__"})


def test_ci_runs_exactly_the_readme_test_command():
    text = README.read_text()
    section = text[text.index("## Install and test") :]
    commands = re.findall(r"```bash\n(python3 -m venv \.venv .*?)\n```", section)
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert commands and commands[0] == ci
