"""Images per second of the whole ST-CNN training step, ours against the same network in PyTorch.

    python -m benchmarks.train_step --out benchmarks/results

The network is the paper's affine ST-CNN as `examples.distorted_digits.build_st_cnn(42)` builds
it (63k weights: the default localisation network, `affine_grid` + bilinear `grid_sample` to 28x28,
the conv classifier), trained with Adam on cross-entropy, global batch 64 of 42x42x1 images. What
is timed is a whole training step (forward, loss, backward, update), as users run it:

- `keras-fit`: `model.compile(jit_compile=True)` and `model.fit` for 16 steps per timed call
  (`keras-fit-no-xla`: `jit_compile=False`, TensorFlow's own kernels);
- `trainer`: `stn_keras.distribute.DistributedTrainer.fit` for one epoch of 16 steps per call,
  without a cluster (the per-replica step compiled with XLA);
- `torch-eager` and `torch-compile`: the same layers, initialisation aside, in PyTorch
  (`F.interpolate`, `F.affine_grid`, `F.grid_sample`), channels-first, `torch.optim.Adam`, 16
  steps per call; the compiled one wraps the model in `torch.compile`;
- `keras-fit on jax` and `keras-fit on torch`: `model.fit` on the other Keras backends, each in a
  process of its own (`KERAS_BACKEND`; `jit_compile=True` on JAX, eager on PyTorch), timed
  interleaved with PyTorch eager in that same process, whose figure the row also gives;
- `trainer-1-process` and `trainer-2-workers`: whole runs of `python -m examples.multiworker
  --workers 1` and `--workers 2` (mnist5k, RTS), their steady images per second (the epochs after
  the first) from `metrics.json`. Both workers share this machine's CPUs (the launcher gives each
  half of them), so this measures what the collective costs, not how a second machine scales.

The `classifier only` rows train the ST-CNN's classifier alone on the 28x28 images it sees: the
difference between the two steps is what the transformer (localisation network, grid, sampler,
their gradients) costs in each framework.

The in-process contenders are timed interleaved (`benchmarks.timing`) on one fixed batch; the
worker runs go first, one at a time. Writes `OUT/NAME.json` and `OUT/NAME.md`.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks import timing  # noqa: E402

BATCH, SIZE, OUT = 64, 42, 28


def _inputs(seed=0, size=SIZE):
    rng = np.random.default_rng(seed)
    return rng.random((BATCH, size, size, 1), dtype=np.float32), rng.integers(0, 10, BATCH)


def _keras_model(transformer=True):
    """The ST-CNN on 42x42, or (`transformer=False`) its classifier alone on the 28x28 it sees."""
    import keras

    from examples import distorted_digits as dd

    keras.utils.set_random_seed(0)
    if transformer:
        return dd.build_st_cnn(SIZE)
    return keras.Sequential([keras.Input((OUT, OUT, 1)), *dd._classifier_layers(64)])


def keras_fit_steps(steps, transformer=True, jit_compile=True):
    """A zero-argument callable running `steps` training steps of `model.fit`."""
    import keras
    import tensorflow as tf

    model = _keras_model(transformer)
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    batches = tf.data.Dataset.from_tensors(_inputs(size=SIZE if transformer else OUT)).repeat()
    return lambda: model.fit(batches, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)


def trainer_steps(steps):
    """A zero-argument callable running `DistributedTrainer.fit` for one epoch of `steps` steps."""
    import keras

    from stn_keras.distribute import DistributedTrainer

    model = _keras_model()
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    trainer = DistributedTrainer(model)
    x, y = _inputs()
    x, y = np.tile(x, (steps, 1, 1, 1)), np.tile(y, steps)
    return lambda: trainer.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)


def _torch_model(transformer=True):
    import torch
    from torch import nn
    from torch.nn import functional as F

    classifier = nn.Sequential(
        nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip
    if not transformer:
        return classifier

    class STCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.localization = nn.Sequential(
                nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(16 * 5 * 5, 32), nn.ReLU(),
            )  # fmt: skip
            self.regression = nn.Linear(32, 6)
            nn.init.zeros_(self.regression.weight)
            with torch.no_grad():
                self.regression.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))
            self.classifier = classifier

        def forward(self, x):
            view = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
            theta = self.regression(self.localization(view)).view(-1, 2, 3)
            grid = F.affine_grid(theta, (x.shape[0], 1, OUT, OUT), align_corners=False)
            return self.classifier(F.grid_sample(x, grid, align_corners=False))

    return STCNN()


def torch_steps(steps, compiled, transformer=True):
    """A zero-argument callable running `steps` PyTorch training steps (eager or compiled)."""
    import torch
    from torch.nn import functional as F

    torch.manual_seed(0)
    model = _torch_model(transformer)
    params = sum(p.numel() for p in model.parameters())
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = _inputs(size=SIZE if transformer else OUT)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(y)

    def run():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(forward(x), y)
            loss.backward()
            optimizer.step()
        return loss.item()

    return run, params


def backend_worker(backend, steps, rounds):
    """Time `model.fit` on this process's Keras backend beside PyTorch eager; print JSON."""
    race = {
        f"keras-fit on {backend}": keras_fit_steps(steps, jit_compile=backend == "jax"),
        "torch-eager": torch_steps(steps, compiled=False)[0],
    }
    timings = timing.time_interleaved(race, rounds=rounds, warmup=2, target_s=0.0)
    json.dump(timings, sys.stdout)


def backend_rows(backend, steps, rounds):
    """`{"keras-fit on BACKEND": row}` from a process running Keras on `backend`."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "benchmarks.train_step", "--worker", backend, "--out", "-"]
    command += ["--steps", str(steps), "--rounds", str(rounds)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    name = f"keras-fit on {backend}"
    if done.returncode != 0:
        return {name: {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:500], "how": ""}}
    timings = json.loads(done.stdout)
    ours, theirs = timings[name], timings["torch-eager"]
    if "error" in ours or "error" in theirs:
        return {name: {"error": ours.get("error") or theirs["error"], "how": ""}}
    torch_rate = steps * BATCH * 1e3 / theirs["median_ms"]
    return {
        name: {
            "images_per_second": steps * BATCH * 1e3 / ours["median_ms"],
            "median_ms": ours["median_ms"],
            "q1_ms": ours["q1_ms"],
            "q3_ms": ours["q3_ms"],
            "torch_eager_same_process": torch_rate,
            "how": f"own process, median of {ours['samples']} calls of {steps} steps interleaved "
            f"with PyTorch eager there ({torch_rate:.0f} images / s)",
        }
    }


def worker_throughput(workers, epochs, max_train, threads=None):
    """Steady images per second of `examples.multiworker` with `workers` processes."""
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable, "-m", "examples.multiworker", "--workers", str(workers),
            "--epochs", str(epochs), "--max-train", str(max_train), "--train-copies", "1",
            "--max-test", "64", "--batch-size", str(BATCH), "--out", out,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
        if result.returncode != 0:
            return {"error": (result.stderr.strip().splitlines() or ["?"])[-1][:500]}
        with open(os.path.join(out, "metrics.json")) as file:
            metrics = json.load(file)
    epochs_timed = metrics["history"][1:]
    return {
        "images_per_second": metrics["images_per_second"],
        "epochs_timed": len(epochs_timed),
        "steps_timed": sum(
            round(e["images_per_second"] * e["seconds"] / BATCH) for e in epochs_timed
        ),
        "replicas_in_sync": metrics["replicas_in_sync"],
    }


def markdown(results):
    """The results as a markdown table of images per second and ratios to `keras-fit`."""
    rows = results["contenders"]
    base = rows.get("keras-fit", {}).get("images_per_second")
    machine = results["machine"]
    lines = [
        "# ST-CNN training step: images per second",
        "",
        f"`{results['command']}` at {results['commit']}, {results['date']}; {machine['cpu_model']}, "
        f"{machine['cpu_count']} CPUs; "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
        "",
        f"Global batch {BATCH} of {SIZE}x{SIZE}x1, the affine ST-CNN (transformer output {OUT}x{OUT}), "
        "Adam, cross-entropy. Higher is better; the ratio is to `keras-fit`.",
        "",
        "| contender | images / s | ratio | how it was timed |",
        "|---|---|---|---|",
    ]
    for name, row in rows.items():
        if "error" in row:
            lines.append(f"| {name} | error | | {row['error']} |")
            continue
        ratio = f"{row['images_per_second'] / base:.2f}x" if base else ""
        lines.append(f"| {name} | {row['images_per_second']:.0f} | {ratio} | {row['how']} |")
    per_step = {
        name: BATCH * 1e3 / row["images_per_second"]
        for name, row in rows.items()
        if "images_per_second" in row
    }
    shares = [
        f"{label} {per_step[full] - per_step[alone]:.1f} ms of {per_step[full]:.1f} ms"
        for label, full, alone in (
            ("ours (`keras-fit`)", "keras-fit", "keras-fit classifier only"),
            ("torch eager", "torch-eager", "torch-eager classifier only"),
        )
        if full in per_step and alone in per_step
    ]
    if shares:
        lines += [
            "",
            "The transformer's share of one step (the ST-CNN step minus the classifier-only "
            "step): " + "; ".join(shares) + ".",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_step", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", default="cpu-train-step")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--epochs", type=int, default=4, help="epochs of the worker runs (the first is not timed)"
    )
    parser.add_argument(
        "--max-train", type=int, default=2048, help="train digits of the worker runs"
    )
    parser.add_argument("--steps", type=int, default=16, help="training steps per timed call")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-workers", action="store_true")
    parser.add_argument("--no-backends", action="store_true", help="skip JAX and PyTorch's Keras")
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return backend_worker(args.worker, args.steps, args.rounds)

    from benchmarks.run import _commit, _machine

    results = {
        "command": "python -m benchmarks.train_step "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "machine": _machine({}),
        "contenders": {},
    }
    rows = results["contenders"]
    if not args.no_workers:
        for workers in (1, 2):
            name = f"trainer-{workers}-process" if workers == 1 else f"trainer-{workers}-workers"
            row = worker_throughput(workers, args.epochs, args.max_train)
            row["how"] = (
                f"examples.multiworker --workers {workers}: {row.get('steps_timed', '?')} steps "
                f"after the first epoch"
            )
            rows[name] = row
            print(name, row, flush=True)
    k = args.steps
    steps = {
        "keras-fit": keras_fit_steps(k),
        "keras-fit-no-xla": keras_fit_steps(k, jit_compile=False),
        "trainer": trainer_steps(k),
        "keras-fit classifier only": keras_fit_steps(k, transformer=False),
    }
    if not args.no_torch:
        try:
            import torch

            results["machine"]["versions"]["torch"] = torch.__version__
            steps["torch-eager"], params = torch_steps(k, compiled=False)
            steps["torch-compile"], _ = torch_steps(k, compiled=True)
            steps["torch-eager classifier only"], _ = torch_steps(k, False, transformer=False)
            results["torch_parameters"] = params
        except ImportError as error:
            rows["torch"] = {"error": f"not importable: {error}"}
    if not args.no_backends:
        for backend in ("jax", "torch"):
            rows.update(backend_rows(backend, k, args.rounds))
            print(backend, rows[f"keras-fit on {backend}"], flush=True)
    timings = timing.time_interleaved(steps, rounds=args.rounds, warmup=2, target_s=0.0)
    for name, stats in timings.items():
        if "error" in stats:
            rows[name] = {"error": stats["error"], "how": ""}
            continue
        rows[name] = {
            "images_per_second": k * BATCH * 1e3 / stats["median_ms"],
            "median_ms": stats["median_ms"],
            "q1_ms": stats["q1_ms"],
            "q3_ms": stats["q3_ms"],
            "how": f"median of {stats['samples']} interleaved calls of {k} steps, in one process",
        }
        print(name, rows[name], flush=True)
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, args.name)
    with open(stem + ".json", "w") as file:
        json.dump(results, file, indent=2)
    with open(stem + ".md", "w") as file:
        file.write(markdown(results))
    print(f"Wrote {stem}.json and {stem}.md")
    return results


if __name__ == "__main__":
    main()
