"""A/B of the sampler across commits: `ours-xla` at a base revision against the working tree, interleaved
in one process, on the benchmark suite's cases and tasks.

    python -m benchmarks.ab --base REV [--threads 2] [--rounds 9] [--cases A,B] [--tasks T] [--out FILE.md]
    python -m benchmarks.ab --base REV --mode eager   # `ours-eager` (or `graph`: `ours-graph`) instead
    python -m benchmarks.ab --base REV --hlo     # compare XLA's optimized HLO instead of timing

The base revision's `stn_keras` is extracted with `git archive` into a temporary folder and imported
as `stn_keras_base`, so both versions run side by side in the same process and under the same load;
each row's ratio is the working tree's median over the base's (above 1: the working tree is slower).
With `--hlo` nothing is timed: each row says whether XLA's optimized HLO of the two versions is the
same program (instruction and computation names aside), which settles a refactor's speed on CPU
without the noise of timing. A case the base revision cannot run (volumes, before it had them) reads
`n/a`.
"""

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _extract(base, folder):
    """`stn_keras` at `base`, importable as `stn_keras_base` from `folder`."""
    archive = subprocess.run(
        ["git", "archive", base, "stn_keras"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    package = folder / "stn_keras_base"
    (folder / "stn_keras").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text()
        text = text.replace("from stn_keras.", "from stn_keras_base.")
        text = text.replace("from stn_keras import", "from stn_keras_base import")
        text = text.replace("import stn_keras\n", "import stn_keras_base as stn_keras\n")
        path.write_text(text)


def _hlo(fn, args):
    """The lines of `fn`'s optimized HLO for `args`, with instruction, computation and metadata
    names blanked: two versions that build the same program compare equal."""
    text = fn.experimental_get_compiler_ir(*args)(stage="optimized_hlo")
    text = re.sub(r"metadata=\{[^}]*\}", "", text)
    text = re.sub(r"%[\w.\-]+", "%v", text)
    text = re.sub(r"(calls|to_apply|condition|body)=[\w.\-%]+", r"\1=c", text)
    text = re.sub(r"^[\w.\-]+ \{|^ENTRY [\w.\-%]+", "{", text, flags=re.M)
    text = re.sub(r"\.\d+", "", text)
    return [line.strip() for line in text.splitlines() if line.strip() and "HloModule" not in line]


# How each version runs (`--mode`), as the suite's `ours-xla`, `ours-graph` and `ours-eager` do.
MODES = ("xla", "graph", "eager")


def _in_mode(fn, mode):
    import tensorflow as tf

    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=mode == "xla")


def _chosen(parser, flag, value, allowed):
    """The names in the comma-separated `value` (all of `allowed` when empty); unknown names are a
    usage error naming `--flag`."""
    names = [name for name in value.split(",") if name] or list(allowed)
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        parser.error(
            f"Invalid value for argument `--{flag}`. Expected a subset of {list(allowed)}. "
            f"Received: {unknown}"
        )
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__)
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    parser.add_argument(
        "--hlo", action="store_true", help="compare the optimized HLO instead of timing"
    )
    parser.add_argument("--cases", default="", help="comma-separated case names. Defaults to all.")
    parser.add_argument("--tasks", default="", help="comma-separated tasks. Defaults to all.")
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="xla",
        help="how both versions run: XLA-compiled (the default), tf.function, or eagerly",
    )
    args = parser.parse_args(argv)
    if args.hlo and args.mode != "xla":
        parser.error("argument --mode: --hlo compares XLA's programs; it takes --mode xla only")
    from benchmarks.suite import SUITE, TASKS

    cases = _chosen(parser, "cases", args.cases, [case.name for case in SUITE])
    tasks = _chosen(parser, "tasks", args.tasks, TASKS)

    from benchmarks.contenders import set_threads
    from benchmarks.contenders.ours import task_functions

    set_threads(args.threads)
    import tensorflow as tf

    import stn_keras
    from benchmarks.suite import make_inputs
    from benchmarks.timing import time_interleaved

    with tempfile.TemporaryDirectory() as folder:
        _extract(args.base, pathlib.Path(folder))
        sys.path.insert(0, folder)
        import stn_keras_base

        if args.hlo:
            lines = [
                f"`python -m benchmarks.ab --base {args.base} --hlo`: ours-xla's optimized HLO.",
                "",
                "| case | task | base lines | working tree lines | same program |",
                "|---|---|---|---|---|",
            ]
        else:
            lines = [
                f"`python -m benchmarks.ab {' '.join(argv if argv is not None else sys.argv[1:])}`: "
                f"ours-{args.mode}, median ms of {args.rounds} interleaved rounds.",
                "",
                "| case | task | base | working tree | ratio |",
                "|---|---|---|---|---|",
            ]
        print("\n".join(lines), flush=True)
        for case in (case for case in SUITE if case.name in cases):
            inputs = {k: tf.constant(v) for k, v in make_inputs(case).items()}
            for task in tasks:
                call = (inputs["images"], inputs["theta"])
                if task != "forward":
                    call += (inputs["upstream"],)
                fns = {
                    name: _in_mode(task_functions(case.out_size, module)[task], args.mode)
                    for name, module in (("base", stn_keras_base), ("tree", stn_keras))
                }
                try:
                    getattr(fns["base"], "get_concrete_function", fns["base"])(*call)
                    base_runs = True
                except Exception:  # e.g. a volume, at a revision without volumes
                    base_runs = False
                if not base_runs:
                    lines.append(f"| {case.name} | {task} | n/a | | |")
                elif args.hlo:
                    base, tree = (_hlo(fns[name], call) for name in ("base", "tree"))
                    row = (len(base), len(tree), "yes" if base == tree else "**no**")
                    lines.append(f"| {case.name} | {task} | {row[0]} | {row[1]} | {row[2]} |")
                else:
                    contenders = {
                        name: lambda fn=fn, call=call: fn(*call) for name, fn in fns.items()
                    }
                    times = time_interleaved(contenders, rounds=args.rounds)
                    base, tree = times["base"]["median_ms"], times["tree"]["median_ms"]
                    lines.append(
                        f"| {case.name} | {task} | {base:.3g} | {tree:.3g} | {tree / base:.2f} |"
                    )
                print(lines[-1], flush=True)
    if args.out:
        pathlib.Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
