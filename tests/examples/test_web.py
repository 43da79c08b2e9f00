"""The web example in a real browser: the site `python -m examples.web` builds, served on localhost,
driven in headless Chromium (Debian's `chromium`, by npm's `playwright-core`), computes what Keras
computes for each digit a visitor picks or draws."""

import contextlib
import functools
import http.server
import json
import pathlib
import shutil
import subprocess
import threading

import numpy as np
import pytest

from examples import distorted_digits
from examples.web import __main__ as web
from stn_keras.export.validation import DEFAULT_ATOL, keras_outputs

NODE_DIR = pathlib.Path(__file__).resolve().parents[1] / "node"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SAMPLES = 4

pytestmark = pytest.mark.xdist_group("web")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    # Module scripts and WebAssembly need their own MIME types, whatever this Python's table says.
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".wasm": "application/wasm",
    }

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _serve(directory):
    """Serve `directory` on a free loopback port; yields its URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if not pathlib.Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: the README's test command installs it")
    model = distorted_digits.build_st_cnn(42)
    # Off the identity, so that the view differs from a centre crop.
    model.get_layer("spatial_transformer").regression.bias.assign([0.8, 0.2, 0.05, -0.2, 0.9, -0.1])
    folder = tmp_path_factory.mktemp("web")
    model.save(folder / "st_cnn.keras")
    out = folder / "site"
    assert (
        web.main(["--model", str(folder / "st_cnn.keras"), "--out", str(out), "--samples", "6"])
        == 0
    )
    return out, web.viewer_model(model)


@pytest.fixture(scope="module")
def visit(site, tmp_path_factory):
    out, _ = site
    screenshot = tmp_path_factory.mktemp("shots") / "page.png"
    with _serve(out) as url:
        done = subprocess.run(
            ["node", str(NODE_DIR / "drive_page.mjs"), url, str(SAMPLES), str(screenshot)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_site_holds_the_page_the_model_the_samples_and_the_runtime(site):
    out, _ = site
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"index.html", "app.js", "model.onnx", "samples.json", *web.ORT_FILES} <= {
        n.removeprefix("ort/") for n in names
    }
    samples = json.loads((out / "samples.json").read_text())
    assert len(samples["images"]) == len(samples["labels"]) == 6
    assert all(len(image) == 42 * 42 for image in samples["images"])


def test_the_page_loads_with_onnxruntime_web_on_webassembly(visit):
    assert visit["errors"] == []
    assert visit["status"] == "ready: onnxruntime-web 1.30.0, WebAssembly"
    assert len(visit["results"]) == SAMPLES + 1


def test_each_picked_digit_gets_the_class_and_view_keras_computes(site, visit):
    out, viewer = site
    samples = json.loads((out / "samples.json").read_text())["images"]
    for index, result in enumerate(visit["results"][:SAMPLES]):
        np.testing.assert_array_equal(
            np.float32(result["input"]), np.float32(samples[index]), err_msg="the page's input"
        )
        _check_against_keras(viewer, result)


def test_a_drawn_digit_gets_the_class_and_view_keras_computes(site, visit):
    _, viewer = site
    drawn = visit["results"][-1]
    assert np.count_nonzero(drawn["input"]) > 20  # the stroke reached the pad
    _check_against_keras(viewer, drawn)
    assert visit["prediction"] == str(drawn["predicted"])


def _check_against_keras(viewer, result):
    image = np.float32(result["input"]).reshape(1, 42, 42, 1)
    logits, view = keras_outputs(viewer, [image])
    for name, got, want in (("logits", result["logits"], logits), ("view", result["output"], view)):
        got, want = np.float32(got), want.ravel()
        tolerance = DEFAULT_ATOL * max(1.0, float(np.max(np.abs(want))))
        np.testing.assert_allclose(got, want, rtol=0, atol=tolerance, err_msg=name)
    assert result["predicted"] == int(np.argmax(logits))
