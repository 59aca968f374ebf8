"""Helpers shared by the benchmark scripts: the method list, timing, memory and tables."""

import inspect
import os
import platform
import statistics
import time

import jax

import came_grad

# Factories exported by came_grad that the benchmarks compare, each called
# with num_tasks=K (and seed when it takes one) and defaults otherwise. Names
# that the installed version does not export are skipped.
METHODS = (
    "linear_scalarization",
    "came_grad",
    "cagrad",
    "mgda",
    "pcgrad",
    "upgrad",
    "dualproj",
    "imtl_g",
    "aligned_mtl",
    "nash_mtl",
    "gradvac",
    "graddrop",
    "config_aggregation",
)


def build_methods(num_tasks: int, seed: int = 0, names=METHODS) -> dict:
    """Build every method of `names` that this version of came_grad exports, by name."""
    built = {}
    for name in names:
        factory = getattr(came_grad, name, None)
        if factory is None:
            continue
        keywords = {"num_tasks": num_tasks}
        if "seed" in inspect.signature(factory).parameters:
            keywords["seed"] = seed
        built[name] = factory(**keywords)
    return built


def block(value):
    """Wait for every array in `value` and return it."""
    return jax.block_until_ready(value)


def interleaved_medians(functions, args, rounds: int = 7, inner: int = 3) -> list[float]:
    """Return the median wall time in milliseconds of each function called on `args`.

    The functions are warmed up (compiled) first and then timed round-robin,
    `inner` calls each per round, so that a change of machine load during the
    measurement affects all of them alike and their ratios stay meaningful.
    """
    for function in functions:
        block(function(*args))
    samples = [[] for _ in functions]
    for _ in range(rounds):
        for index, function in enumerate(functions):
            for _ in range(inner):
                start = time.perf_counter()
                block(function(*args))
                samples[index].append(time.perf_counter() - start)
    return [1e3 * statistics.median(times) for times in samples]


def temp_bytes(function, *args) -> int:
    """Return the temporary buffer size that XLA reports for the compiled `function(*args)`."""
    compiled = jax.jit(function).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def format_table(headers, rows) -> str:
    """Format rows of values as a Markdown table."""
    text_rows = [[str(value) for value in row] for row in rows]
    widths = [max(len(str(header)), *(len(row[i]) for row in text_rows)) for i, header in enumerate(headers)]
    lines = [
        "| " + " | ".join(str(header).ljust(width) for header, width in zip(headers, widths)) + " |",
        "| " + " | ".join("-" * width for width in widths) + " |",
    ]
    for row in text_rows:
        lines.append("| " + " | ".join(value.rjust(width) for value, width in zip(row, widths)) + " |")
    return "\n".join(lines)


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    """Describe the machine, the software and the current load in one line."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, jax {jax.__version__}, "
        f"backend {jax.default_backend()}, 1-minute load average {load:.2f}"
    )
