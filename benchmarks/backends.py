"""The sampler on each Keras backend, beside PyTorch's own kernel timed in the same process.

    python -m benchmarks.backends [--threads 2] [--rounds 7] [--quick] [--out benchmarks/results/cpu-backends]

Runs one worker process per backend (`KERAS_BACKEND` is fixed when Keras is imported). Each worker
times `grid_sample(images, affine_grid(theta))` (bilinear, zeros), forward and forward + backward
w.r.t. images and theta, compiled the backend's way (TensorFlow: `tf.function(jit_compile=True)`;
JAX: `jax.jit`; PyTorch: eager and `torch.compile`), interleaved with PyTorch's `F.affine_grid` +
`F.grid_sample` in NCHW and channels-last (`benchmarks.contenders.torch_native`), so each row's
ratio (PyTorch's faster layout over ours, above 1: ours is faster) compares two things measured
under the same load. Writes `OUT.json` and `OUT.md`.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

BACKENDS = ("tensorflow", "jax", "torch")
TASKS = ("forward", "backward_all")


def _ours(case, inputs, task, backend):
    """Contenders running stn-keras's ops on `backend` (which this process has)."""
    import keras

    import stn_keras

    def sample(images, theta):
        return stn_keras.grid_sample(images, stn_keras.affine_grid(theta, case.out_size))

    images, theta, upstream = (inputs[k].astype("float32") for k in ("images", "theta", "upstream"))
    if backend == "tensorflow":
        import tensorflow as tf

        def step(x, t):
            if task == "forward":
                return sample(x, t)
            with tf.GradientTape() as tape:
                tape.watch([x, t])
                loss = tf.reduce_sum(sample(x, t) * upstream)
            return tape.gradient(loss, [x, t])

        fn, args = tf.function(step, jit_compile=True), (tf.constant(images), tf.constant(theta))
        return {"ours-tf-xla": lambda: keras.ops.convert_to_numpy(_first(fn(*args)))}
    if backend == "jax":
        import jax

        def loss(x, t):
            return (sample(x, t) * upstream).sum()

        fn = jax.jit(sample if task == "forward" else jax.grad(loss, argnums=(0, 1)))
        args = (jax.numpy.asarray(images), jax.numpy.asarray(theta))
        return {"ours-jax-jit": lambda: jax.block_until_ready(fn(*args))}
    import torch

    def step(x, t):
        if task == "forward":
            with torch.no_grad():
                return sample(x, t)
        x, t = x.detach().requires_grad_(True), t.detach().requires_grad_(True)
        sample(x, t).backward(torch.from_numpy(upstream))
        return x.grad, t.grad

    args = (torch.from_numpy(images), torch.from_numpy(theta))
    torch._dynamo.reset()  # each case compiles for its own static shapes, as a user's model would
    compiled = torch.compile(step)
    return {"ours-torch-eager": lambda: step(*args), "ours-torch-compile": lambda: compiled(*args)}


def _first(out):
    return out[0] if isinstance(out, list | tuple) else out


def worker(backend, threads, rounds, quick):
    """Time every case and task on this process's backend; print the records as JSON."""
    from benchmarks import contenders, suite
    from benchmarks.contenders import torch_native
    from benchmarks.timing import time_interleaved

    contenders.THREADS = threads
    cases = suite.QUICK_SUITE if quick else suite.SUITE[:3] + suite.SUITE[6:7]
    records = []
    for case in cases:
        inputs = suite.make_inputs(case)
        for task in TASKS:
            race = _ours(case, inputs, task, backend)
            race.update({name: c.run for name, c in torch_native.build(case, inputs, task).items()})
            for name, timing in time_interleaved(race, rounds=rounds).items():
                records.append(
                    {
                        "backend": backend,
                        "case": case.name,
                        "task": task,
                        "contender": name,
                        **timing,
                    }
                )
            print(f"{backend} {case.name} {task} done", file=sys.stderr, flush=True)
    json.dump(records, sys.stdout)


def _start_worker(backend, args):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "benchmarks.backends", "--worker", backend]
    command += ["--rounds", str(args.rounds)]
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--quick"] if args.quick else []
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _records(process):
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"a backend worker failed: {err.decode(errors='replace')[-2000:]}")
    return json.loads(out)


def _run_workers(args):
    """Every backend's records. The timed runs go one at a time; `--quick` (a smoke test of the
    pipeline, whose times mean nothing) starts them together."""
    if args.quick:
        processes = [_start_worker(backend, args) for backend in BACKENDS]
        return [r for process in processes for r in _records(process)]
    return [r for backend in BACKENDS for r in _records(_start_worker(backend, args))]


def markdown(records, command):
    """One table: per case and task, each backend's time and PyTorch's best layout's over it."""
    from benchmarks.run import provenance

    lines = [
        f"`{command}` {provenance()}: median ms (interquartile range); ratio = PyTorch's faster layout "
        "(eager, timed in the same process) / ours: above 1, ours is faster.",
        "",
        "| case | task | ours | ms | PyTorch eager ms | ratio |",
        "|---|---|---|---|---|---|",
    ]
    key = {}
    for r in records:
        key.setdefault((r["case"], r["task"], r["backend"]), {})[r["contender"]] = r
    for (case, task, _), row in key.items():
        torch_ms = min(
            row[n]["median_ms"] for n in ("torch-nchw", "torch-cl") if "median_ms" in row.get(n, {})
        )
        for name, r in row.items():
            if not name.startswith("ours") or "median_ms" not in r:
                continue
            lines.append(
                f"| {case} | {task} | {name} | {r['median_ms']:.3g} "
                f"({r['q1_ms']:.3g}-{r['q3_ms']:.3g}) | {torch_ms:.3g} | "
                f"{torch_ms / r['median_ms']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backends", description=__doc__)
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one tiny case (a smoke test)")
    parser.add_argument("--out", default="benchmarks/results/cpu-backends")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.threads, args.rounds, args.quick)
        return 0
    records = _run_workers(args)
    out = pathlib.Path(args.out)
    command = "python -m benchmarks.backends " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    out.with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(records, command.strip()))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
