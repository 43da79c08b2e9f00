"""Results as JSON (for comparing runs) and as markdown tables of times and ratios."""

import json

TASK_TITLES = {
    "forward": "Forward",
    "backward_theta": "Forward + backward w.r.t. theta (an STN on the network's input)",
    "backward_all": "Forward + backward w.r.t. images and theta (an STN mid-network)",
}
WARP_TITLES = {
    "warp_forward": "Warp by a displacement field",
    "warp_backward": "Warp, forward + backward w.r.t. images and field",
}
MEMORY_TITLES = {
    "backward_all": "forward + backward w.r.t. images and theta",
    "warp_backward": "the warp, forward + backward w.r.t. images and field",
}
# Column order of the tables; contenders missing from a run are left out.
COLUMNS = (
    "ours-xla",
    "ours-graph",
    "ours-eager",
    "torch-nchw",
    "torch-cl",
    "tf-projective",
    "keras-map-coordinates",
    "onnx-ours",
    "onnx-native",
    "memcpy",
    "xla-call",
    "xla-scatter",
)
REFERENCE = "ours-xla"


def write_json(path, results):
    with open(path, "w") as file:
        json.dump(results, file, indent=1)


def _cell(record):
    if record is None:
        return ""
    if "error" in record:
        return "error"
    return f"{record['median_ms']:.3g}"


def _ratio(record, reference):
    if not record or not reference or "error" in record or "error" in reference:
        return ""
    return f"{record['median_ms'] / reference['median_ms']:.2f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _cpus_used(machine):
    used = machine.get("cpus_used")
    return f" ({used} used)" if used and used != machine["cpu_count"] else ""


def _median(by_key, case, task, contender):
    record = by_key.get((case, task, contender))
    return record["median_ms"] if record and "median_ms" in record else None


def _versus_torch(by_key, case, task):
    """`ours ms / torch ms (speed-up)` for one cell, torch being its faster layout."""
    ours = _median(by_key, case, task, REFERENCE)
    torch = [_median(by_key, case, task, c) for c in ("torch-nchw", "torch-cl")]
    torch = min((t for t in torch if t is not None), default=None)
    if ours is None:
        return ""
    if torch is None:
        return f"{ours:.3g}"
    return f"{ours:.3g} / {torch:.3g} ({torch / ours:.2f}x)"


def summary(results):
    """Markdown lines of the headline table: `ours-xla` against torch's faster layout, per task.

    Each task's cell reads `ours ms / torch ms (speed-up)`, the speed-up being torch's time over
    ours (above 1: ours is faster); the last columns are `ours-xla`'s forward time over the memcpy
    floor's and the time of an XLA-compiled call that does nothing (`xla-call`, forward). The
    warp's cases get a table of their own.
    """
    by_key = {(r["case"], r["task"], r["contender"]): r for r in results["timings"]}
    lines = []
    cases = list(dict.fromkeys(r["case"] for r in results["timings"] if r["task"] in TASK_TITLES))
    if cases:
        lines += [
            f"`{REFERENCE}` / torch's faster layout, ms (torch's time over ours: above 1, ours is "
            "faster):",
            "",
        ]
        header = [
            "case",
            "forward",
            "fwd + bwd (theta)",
            "fwd + bwd (images, theta)",
            "fwd / memcpy",
            "xla-call",
        ]
        rows = []
        for case in cases:
            row = [case] + [_versus_torch(by_key, case, task) for task in TASK_TITLES]
            ours, floor = (_median(by_key, case, "forward", c) for c in (REFERENCE, "memcpy"))
            row.append(f"{ours / floor:.0f}x" if ours and floor else "")
            call = _median(by_key, case, "forward", "xla-call")
            row.append(f"{call:.3g}" if call else "")
            rows.append(row)
        lines += _table(header, rows)
    warp_cases = list(
        dict.fromkeys(r["case"] for r in results["timings"] if r["task"] in WARP_TITLES)
    )
    if warp_cases:
        lines += [
            "",
            "The warp by a displacement field (`stn_keras.warp`; torch: `F.grid_sample` "
            "on base grid + flow):",
            "",
        ]
        rows = [[c] + [_versus_torch(by_key, c, task) for task in WARP_TITLES] for c in warp_cases]
        lines += _table(["case", "warp", "warp fwd + bwd (images, field)"], rows)
    return lines


def markdown(results):
    """The markdown report of `results` (the dict `benchmarks.run` writes as JSON)."""
    machine = results["machine"]
    load = ", ".join(f"{a:.2f}" for a in machine["loadavg_start"])
    load_end = ", ".join(f"{a:.2f}" for a in machine["loadavg_end"])
    lines = [
        "# grid_sample benchmark",
        "",
        f"`{results['command']}` at {results['date']} (commit `{results['commit']}`).",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpu_count']} logical CPUs"
        f"{_cpus_used(machine)}, load average "
        f"{load} at the start and {load_end} at the end; {machine['platform']}. Threads per "
        f"framework: {results.get('threads') or 'each framework default (all cores)'}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()) + ".",
        "",
        "Work: `affine_grid` + `grid_sample` (bilinear, zeros padding, align_corners=False), "
        "float32, channels-last unless the name says otherwise. Times are medians over "
        f"{results['rounds']} interleaved rounds, in milliseconds; ratios are a contender's time "
        f"over `{REFERENCE}`'s, so a ratio above 1 means `{REFERENCE}` is faster. `memcpy` copies "
        "as many bytes as the output holds: the bandwidth floor. `xla-call` is an XLA-compiled "
        "TensorFlow call with the same arguments that does almost nothing: the cost of a call.",
    ]
    lines += [
        "",
        "## Summary",
        "",
    ]
    lines += summary(results)
    records = results["timings"]
    cases = list(dict.fromkeys(r["case"] for r in records))
    for task, title in {**TASK_TITLES, **WARP_TITLES}.items():
        by_key = {(r["case"], r["contender"]): r for r in records if r["task"] == task}
        cases = list(dict.fromkeys(r["case"] for r in records if r["task"] == task))
        columns = [c for c in COLUMNS if any((case, c) in by_key for case in cases)]
        if not columns:
            continue
        lines += ["", f"## {title}", "", "Time (ms):", ""]
        rows = [[case] + [_cell(by_key.get((case, c))) for c in columns] for case in cases]
        lines += _table(["case"] + columns, rows)
        others = [c for c in columns if c != REFERENCE]
        if REFERENCE in columns and others:
            lines += ["", f"Time relative to `{REFERENCE}`:", ""]
            rows = [
                [case]
                + [_ratio(by_key.get((case, c)), by_key.get((case, REFERENCE))) for c in others]
                for case in cases
            ]
            lines += _table(["case"] + others, rows)
    for task, title in MEMORY_TITLES.items():
        records_of_task = [r for r in results.get("memory", []) if r.get("task") == task]
        if not records_of_task:
            continue
        memory = {(r["case"], r["contender"]): r["peak_mib"] for r in records_of_task}
        cases = list(dict.fromkeys(r["case"] for r in records_of_task))
        columns = [c for c in COLUMNS if any((case, c) in memory for case in cases)]
        lines += [
            "",
            f"## Peak memory of {title}",
            "",
            "Peak memory during one call above the level before it, MiB: TensorFlow's allocator "
            "statistics for ours, the peak resident set size for torch (see `benchmarks/memory.py`):",
            "",
        ]
        rows = [
            [case] + [f"{memory[(case, c)]:.1f}" if (case, c) in memory else "" for c in columns]
            for case in cases
        ]
        lines += _table(["case"] + columns, rows)
    checks = results.get("checks", [])
    if checks:
        lines += [
            "",
            "## Checks",
            "",
            "Largest absolute difference of each forward output from `ours-graph`'s "
            "(inputs ~ N(0, 1)):",
            "",
        ]
        names = list(dict.fromkeys(c["contender"] for c in checks))
        diffs = {
            (c["case"], c.get("task", "forward"), c["contender"]): c["max_abs_diff"] for c in checks
        }
        keys = list(dict.fromkeys((c["case"], c.get("task", "forward")) for c in checks))
        rows = [
            [f"{case} ({task})"]
            + [f"{diffs[(case, task, n)]:.1e}" if (case, task, n) in diffs else "" for n in names]
            for case, task in keys
        ]
        lines += _table(["case"] + names, rows)
    errors = [r for r in records if "error" in r]
    if errors:
        lines += ["", "## Errors", ""]
        lines += [f"- {r['case']} {r['task']} {r['contender']}: {r['error']}" for r in errors]
    return "\n".join(lines) + "\n"
