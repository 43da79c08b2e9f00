"""The benchmark harness runs end to end on one tiny shape and writes the rows it promises."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import memory, run
from benchmarks.contenders import floors
from benchmarks.suite import QUICK_SUITE, QUICK_WARP_SUITE, TASKS, WARP_TASKS

# torch is optional (the `bench` extra) and tests never import it: run the families that need no torch.
FAMILIES = ("ours", "tf", "onnx", "floors")


def test_quick_run_writes_json_and_markdown_with_every_row(tmp_path):
    argv = ["--out", str(tmp_path), "--quick", "--rounds", "1", "--no-memory"]
    run.main(argv + ["--families", ",".join(FAMILIES)])
    results = json.loads((tmp_path / "results.json").read_text())
    timed = {(r["task"], r["contender"]) for r in results["timings"] if "median_ms" in r}
    for task in TASKS:
        for mode in ("eager", "graph", "xla"):
            assert (task, f"ours-{mode}") in timed
        assert (task, "xla-call") in timed
    assert ("backward_all", "xla-scatter") in timed
    for contender in (
        "tf-projective",
        "keras-map-coordinates",
        "onnx-ours",
        "onnx-native",
        "memcpy",
    ):
        assert ("forward", contender) in timed
    for task in WARP_TASKS:
        for mode in ("eager", "graph", "xla"):
            assert (task, f"ours-{mode}") in timed
    assert {r["case"] for r in results["timings"] if r["task"] in WARP_TASKS} == {
        c.name for c in QUICK_WARP_SUITE
    }
    assert not [r for r in results["timings"] if "error" in r]
    assert not any(r["contender"].startswith("torch") for r in results["timings"])
    # The harness compares every warp's output with ours: they must all compute the same thing.
    diffs = {c["contender"]: c["max_abs_diff"] for c in results["checks"]}
    assert set(diffs) >= {"ours-xla", "tf-projective", "onnx-ours", "onnx-native"}
    assert {c["case"] for c in results["checks"] if c["task"] == "warp_forward"} == {
        c.name for c in QUICK_WARP_SUITE
    }
    assert max(diffs.values()) < 1e-4
    assert len(results["machine"]["loadavg_end"]) == 3 and results["machine"]["cpu_model"]

    markdown = (tmp_path / "results.md").read_text()
    for heading in (
        "## Forward",
        "## Forward + backward w.r.t. theta",
        "## Warp by a displacement field",
        "Time relative to `ours-xla`",
    ):
        assert heading in markdown
    assert f"| {QUICK_SUITE[0].name} |" in markdown


def test_contenders_keeps_only_the_named_ones_and_refuses_unknown_names(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--quick", "--rounds", "1", "--no-memory"]
    argv += ["--families", "ours,floors", "--tasks", "backward_all"]
    run.main([*argv, "--contenders", "ours-xla,xla-scatter"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["contender"] for r in results["timings"]} == {"ours-xla", "xla-scatter"}
    with pytest.raises(SystemExit) as exit_info:
        run.main([*argv, "--contenders", "ours-xla,fastest"])
    assert exit_info.value.code == 2 and "`--contenders`" in capsys.readouterr().err


@pytest.mark.parametrize("case", [QUICK_SUITE[0], QUICK_WARP_SUITE[1]], ids=lambda c: c.name)
def test_the_scatter_floor_adds_every_update_once_per_tap(case):
    # 4 taps for an image, 8 for a volume; every row is inside the image, so nothing is dropped.
    # float64: per channel n <= 3,840 additions of N(0, 1) terms, sum |x| ~ 0.8 n, so the order of
    # the sums changes them by at most n * eps64 * sum |x| ~ 3,840 * 1.1e-16 * 3,100 = 1.3e-9.
    upstream = np.random.default_rng(0).standard_normal((case.batch, *case.out_size, case.channels))
    gradient = floors._scatter_floor(case, tf.constant(upstream)).run().numpy()
    assert gradient.shape == (case.batch * math.prod(case.in_size), case.channels)
    taps = 2 ** len(case.in_size)
    want = taps * upstream.reshape(-1, case.channels).sum(0)
    np.testing.assert_allclose(gradient.sum(0), want, rtol=0, atol=1e-8)


def _check_memory_records(records, method):
    assert {r["contender"] for r in records} == {"ours-graph", "ours-xla"}
    for record in records:
        assert record["task"] == "backward_all" and record["method"] == method
        assert isinstance(record["peak_mib"], float)


def _has_allocator_statistics():
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        return True
    except ValueError:  # this build keeps no CPU allocator statistics
        return False


def test_peak_memory_has_a_row_per_contender():
    # In-process here (the harness runs it in a child with a fixed mmap threshold, for accuracy).
    method = "allocator" if _has_allocator_statistics() else "rss"
    _check_memory_records(memory.measure(QUICK_SUITE[:1], families=("ours",)), method)


def test_peak_memory_falls_back_to_rss_without_allocator_statistics(monkeypatch):
    if not _has_allocator_statistics():
        pytest.skip("no CPU allocator statistics here: the test above measured by RSS already")

    def unavailable(device):
        raise ValueError(f"Cannot reset memory stats for device '{device}'")

    monkeypatch.setattr(tf.config.experimental, "reset_memory_stats", unavailable)
    _check_memory_records(memory.measure(QUICK_SUITE[:1], families=("ours",)), "rss")


def test_train_step_report_gives_ratios_and_the_transformers_share():
    from benchmarks import train_step

    per_step_ms = {
        "keras-fit": 40.0,
        "keras-fit classifier only": 10.0,
        "torch-eager": 20.0,
        "torch-eager classifier only": 8.0,
    }
    rows = {
        name: {"images_per_second": train_step.BATCH * 1e3 / ms, "how": "t"}
        for name, ms in per_step_ms.items()
    }
    rows["trainer-2-workers"] = {"error": "worker 1 failed", "how": ""}
    results = {
        "command": "c",
        "commit": "abc",
        "date": "d",
        "machine": {"cpu_model": "cpu", "cpu_count": 2, "versions": {"tensorflow": "2"}},
        "contenders": rows,
    }
    markdown = train_step.markdown(results)
    assert "| keras-fit | 1600 | 1.00x | t |" in markdown
    assert "| torch-eager | 3200 | 2.00x | t |" in markdown
    assert "| trainer-2-workers | error | | worker 1 failed |" in markdown
    assert "ours (`keras-fit`) 30.0 ms of 40.0 ms; torch eager 12.0 ms of 20.0 ms" in markdown


def test_the_backends_benchmark_times_every_backend_beside_pytorch(tmp_path):
    from benchmarks import backends

    out = tmp_path / "backends"
    backends.main(["--quick", "--rounds", "1", "--out", str(out)])
    records = json.loads(out.with_suffix(".json").read_text())
    timed = {(r["backend"], r["task"], r["contender"]) for r in records if "median_ms" in r}
    expected = {"tensorflow": ["ours-tf-xla"], "jax": ["ours-jax-jit"]}
    expected["torch"] = ["ours-torch-eager", "ours-torch-compile"]
    for backend, ours in expected.items():
        for task in backends.TASKS:
            for contender in [*ours, "torch-nchw", "torch-cl"]:
                assert (backend, task, contender) in timed
    assert "| ours-jax-jit |" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("mode", ["eager", "nonsense"])
def test_ab_refuses_a_mode_hlo_cannot_compare_naming_the_flag(mode, capsys):
    from benchmarks import ab

    with pytest.raises(SystemExit) as exit_info:
        ab.main(["--base", "HEAD", "--hlo", "--mode", mode])
    assert exit_info.value.code == 2 and "argument --mode" in capsys.readouterr().err
