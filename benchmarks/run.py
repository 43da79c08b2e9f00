"""Time our sampler against the alternatives, side by side in one run; write JSON and markdown.

    python -m benchmarks.run --out benchmarks/results            # the full suite, a few minutes
    python -m benchmarks.run --out /tmp/bench --quick            # tiny shapes, a smoke test
    python -m benchmarks.run --out benchmarks/results --suite volumes    # the volume cases only

Writes `OUT/NAME.json` (every timing, the machine, versions and load) and `OUT/NAME.md` (tables of
times and of ratios to `ours-xla`). torch (the `bench` extra) and onnxruntime (`export`) are
optional: their columns are left out when they are not importable.
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks import memory, report, timing  # noqa: E402
from benchmarks.contenders import FAMILIES  # noqa: E402
from benchmarks.suite import (  # noqa: E402
    QUICK_SUITE,
    QUICK_WARP_SUITE,
    SUITE,
    TASKS,
    WARP_SUITE,
    WARP_TASKS,
)

ALL_TASKS = TASKS + WARP_TASKS

# The forward outputs are compared with this contender's.
CHECK_REFERENCE = "ours-graph"


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", required=True, help="directory for NAME.json and NAME.md")
    parser.add_argument("--name", default="results", help="file name stem. Defaults to `results`.")
    parser.add_argument("--quick", action="store_true", help="one tiny shape, few rounds")
    parser.add_argument(
        "--rounds", type=int, default=None, help="timed rounds (default 9, quick 3)"
    )
    parser.add_argument(
        "--families",
        default=",".join(FAMILIES),
        help=f"comma-separated contender families to run, from {tuple(FAMILIES)}. Defaults to all.",
    )
    parser.add_argument(
        "--tasks", default=",".join(ALL_TASKS), help=f"from {ALL_TASKS}. Defaults to all."
    )
    parser.add_argument(
        "--suite",
        choices=("all", "images", "volumes"),
        default="all",
        help="which cases: images (B, H, W, C), volumes (B, D, H, W, C) or both. Defaults to all.",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for TF/XLA, torch and onnxruntime alike, and the process confined to as "
        "many CPUs. Defaults to each one's default, on every CPU.",
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory child process"
    )
    parser.add_argument(
        "--contenders",
        default="",
        help="comma-separated contender names to keep (e.g. ours-xla,torch-cl). Defaults to all.",
    )
    args = parser.parse_args(argv)
    args.families = [f for f in args.families.split(",") if f]
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.contenders = [c for c in args.contenders.split(",") if c]
    for value, allowed, flag in (
        (args.families, tuple(FAMILIES), "families"),
        (args.tasks, ALL_TASKS, "tasks"),
        (args.contenders, report.COLUMNS, "contenders"),
    ):
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            parser.error(
                f"Invalid value for argument `--{flag}`. Expected a subset of {allowed}. "
                f"Received: {unknown}"
            )
    if args.rounds is None:
        args.rounds = 3 if args.quick else 9
    return args


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def provenance():
    """`at COMMIT, DATE; CPU, N CPUs`: where and when a report was measured."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"at {_commit()}, {date}; {_cpu_model()}, {os.cpu_count()} CPUs"


def _commit():
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=root,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _command(argv):
    """The command line that reproduces the run, with the XLA flags it ran under (they change what
    XLA compiles, e.g. its scheduler)."""
    flags = os.environ.get("XLA_FLAGS")
    prefix = f"XLA_FLAGS='{flags}' " if flags else ""
    return prefix + "python -m benchmarks.run " + " ".join(argv)


def _machine(modules):
    import keras
    import tensorflow as tf

    versions = {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__}
    for module in modules.values():
        if hasattr(module, "describe"):
            versions.update({k: v for k, v in module.describe().items() if v is not None})
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        # The CPUs this process may run on (`--threads` confines it to that many).
        "cpus_used": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "loadavg_start": list(os.getloadavg()),
    }


def _check_forward(case, contenders, task="forward"):
    """Max |output - reference output| of every forward contender that yields a warp."""
    outputs = {}
    for name, contender in contenders.items():
        if contender.to_numpy is not None:
            try:
                outputs[name] = contender.to_numpy(contender.run())
            except Exception:  # reported by the timing as an error
                continue
    reference = outputs.get(CHECK_REFERENCE)
    if reference is None:
        return []
    return [
        {
            "case": case.name,
            "task": task,
            "contender": name,
            "max_abs_diff": float(np.max(np.abs(out - reference)))
            if out.shape == reference.shape
            else float("inf"),
        }
        for name, out in outputs.items()
        if name != CHECK_REFERENCE
    ]


def main(argv=None):
    """Run the benchmark; returns the results dict it wrote."""
    args = _parse(argv)
    from benchmarks.contenders import family_modules, set_threads

    if args.threads:
        set_threads(args.threads)
    modules = family_modules(args.families)
    results = {
        "command": _command(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "rounds": args.rounds,
        "threads": args.threads,
        "machine": _machine(modules),
        "timings": [],
        "checks": [],
        "memory": [],
    }
    cases = QUICK_SUITE if args.quick else SUITE
    warp_cases = QUICK_WARP_SUITE if args.quick else WARP_SUITE
    if args.suite != "all":
        cases, warp_cases = (
            tuple(c for c in group if c.is_volume == (args.suite == "volumes"))
            for group in (cases, warp_cases)
        )
    from benchmarks.suite import make_inputs

    runs = [(c, [t for t in args.tasks if t in TASKS]) for c in cases]
    runs += [(c, [t for t in args.tasks if t in WARP_TASKS]) for c in warp_cases]
    for case, tasks in runs:
        if not tasks:
            continue
        inputs = make_inputs(case)
        for task in tasks:
            contenders = {}
            for family, module in modules.items():
                try:
                    contenders.update(module.build(case, inputs, task))
                except Exception as error:  # e.g. a conversion that fails: report, keep going
                    results["timings"].append(
                        {
                            "case": case.name,
                            "task": task,
                            "contender": family,
                            "error": f"{type(error).__name__}: {error}"[:500],
                        }
                    )
            if args.contenders:
                contenders = {n: c for n, c in contenders.items() if n in args.contenders}
            if task in ("forward", "warp_forward"):
                results["checks"] += _check_forward(case, contenders, task)
            timings = timing.time_interleaved(
                {name: c.run for name, c in contenders.items()}, rounds=args.rounds
            )
            for name, stats in timings.items():
                results["timings"].append(
                    {"case": case.name, "task": task, "contender": name, **stats}
                )
            print(_progress(case, task, timings), flush=True)
    if not args.no_memory and "ours" in modules:
        families = list(modules)
        if "backward_all" in args.tasks:
            results["memory"] += memory.measure_in_child(cases, families, args.threads)
        if "warp_backward" in args.tasks:
            results["memory"] += memory.measure_in_child(
                warp_cases, families, args.threads, task="warp_backward"
            )
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, args.name)
    report.write_json(stem + ".json", results)
    with open(stem + ".md", "w") as file:
        file.write(report.markdown(results))
    print(f"Wrote {stem}.json and {stem}.md")
    return results


def _progress(case, task, timings):
    cells = [
        f"{name} {stats['median_ms']:.3g}" if "median_ms" in stats else f"{name} error"
        for name, stats in timings.items()
    ]
    return f"{case.name} {task}: " + ", ".join(cells) + " (ms)"


if __name__ == "__main__":
    main()
