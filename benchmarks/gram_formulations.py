"""Compare exact formulations of the Gram matrix of one `[K, n]` float32 leaf on this backend.

For each K and n the script times the formulations of `came_grad._gram`:
one matrix product, and chunked loops with several chunk widths. It also
times four alternatives defined here that the library does not use, and two
ways to compute the combination `sum_i w_i x_i` over the task axis. The alternatives that need
a reshape fall back to one `dot_general` when n does not divide evenly. The row marked "chosen" is
the chunk width that `came_grad._gram` uses for this K.
Times are medians of interleaved runs in milliseconds. The ratio column
divides by the faster combination, the pass that every method makes anyway,
and the temp column is the temporary memory that XLA reports.

Usage:
  PYTHONPATH=. python benchmarks/gram_formulations.py --tasks 2 4 8 --sizes 1e5 1e6 1e7
"""

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from came_grad import _gram
from common import format_table, interleaved_medians, machine_line, temp_bytes


def tensordot_combination(weights, rows):
    return jnp.tensordot(weights, rows, axes=1)


def unrolled_combination(weights, rows):
    total = weights[0] * rows[0]
    for index in range(1, rows.shape[0]):
        total = total + weights[index] * rows[index]
    return total


COMBINATIONS = {"combine: tensordot": tensordot_combination, "combine: unrolled sum": unrolled_combination}


def pairwise_vdot(rows):
    """Gram matrix from one `vdot` per pair of rows (the upper triangle, mirrored)."""
    num_tasks = rows.shape[0]
    entries = {}
    for i in range(num_tasks):
        for j in range(i, num_tasks):
            entries[i, j] = jnp.vdot(rows[i], rows[j])
    return jnp.stack([jnp.stack([entries[min(i, j), max(i, j)] for j in range(num_tasks)]) for i in range(num_tasks)])


def chunked_broadcast(rows, chunk=4096, block=64):
    """Gram matrix from a loop over chunks, each reduced as a sum of broadcast row products."""
    num_tasks, size = rows.shape
    full_chunks = size // chunk

    def chunk_gram(part):
        blocks = part.reshape(num_tasks, -1, block)
        return jnp.sum(jnp.sum(blocks[:, None] * blocks[None, :], axis=2), axis=-1)

    def body(index, total):
        return total + chunk_gram(jax.lax.dynamic_slice_in_dim(rows, index * chunk, chunk, axis=1))

    total = jax.lax.fori_loop(0, full_chunks, body, jnp.zeros((num_tasks, num_tasks), rows.dtype))
    return total + _gram.gram_dot(rows[:, full_chunks * chunk :])


def row_block_dot(rows, blocks=4):
    """Gram matrix from one `[K * r, n / r]` product: sums of the diagonals of its `r x r` blocks."""
    num_tasks, size = rows.shape
    if size % blocks:
        return _gram.gram_dot(rows)
    stacked = rows.reshape(num_tasks * blocks, size // blocks)
    products = jax.lax.dot_general(stacked, stacked, (((1,), (1,)), ((), ())))
    return jnp.trace(products.reshape(num_tasks, blocks, num_tasks, blocks), axis1=1, axis2=3)


def batched_block_dot(rows, block=1024):
    """Gram matrix from a batched product over blocks of `block` columns, summed over the blocks."""
    num_tasks, size = rows.shape
    if size % block:
        return _gram.gram_dot(rows)
    blocks = rows.reshape(num_tasks, size // block, block)
    return jax.lax.dot_general(blocks, blocks, (((2,), (2,)), ((1,), (1,)))).sum(axis=0)


def formulations(num_tasks: int, include_slow: bool = True) -> dict:
    """Return the Gram formulations to compare, by display name."""
    chosen = _gram.chunk_columns(num_tasks)
    candidates = {"one dot_general": _gram.gram_dot}
    for chunk in (2048, 4096, 8192, 16384, 32768):
        marker = " (chosen)" if chunk == chosen else ""
        candidates[f"chunked, c={chunk}{marker}"] = functools.partial(_gram.gram_chunked_dot, chunk=chunk)
    candidates[f"chunked, c={chosen}, 2 loops"] = functools.partial(_gram.gram_chunked_dot, chunk=chosen, loops=2)
    if include_slow:
        candidates["chunked broadcast, c=4096"] = chunked_broadcast
        candidates["vdot per pair"] = pairwise_vdot
        candidates["[4K, n/4] product"] = row_block_dot
        candidates["batched 1024-column blocks"] = batched_block_dot
    return candidates


def measure(num_tasks: int, size: int, rounds: int, include_slow: bool) -> list[list[str]]:
    """Time every formulation and combination for one `[num_tasks, size]` leaf."""
    rng = np.random.default_rng(0)
    rows = jnp.asarray(rng.standard_normal((num_tasks, size), dtype=np.float32))
    weights = jnp.ones((num_tasks,), jnp.float32)
    reference = np.asarray(rows, np.float64) @ np.asarray(rows, np.float64).T

    grams = {name: (lambda w, x, f=formulation: f(x)) for name, formulation in formulations(num_tasks, include_slow).items()}
    functions = {**COMBINATIONS, **grams}

    jitted = {name: jax.jit(function) for name, function in functions.items()}
    for name in grams:
        error = np.max(np.abs(np.asarray(jitted[name](weights, rows)) - reference)) / np.max(np.abs(reference))
        if error > 1e-5:
            raise AssertionError(f"formulation {name} is inexact: relative error {error:.1e}")

    times = dict(zip(jitted, interleaved_medians(list(jitted.values()), (weights, rows), rounds=rounds)))
    baseline = min(times[name] for name in COMBINATIONS)

    table = []
    for name, milliseconds in times.items():
        table.append(
            [
                num_tasks,
                f"{size:.0e}",
                name,
                f"{milliseconds:.3f}",
                f"{milliseconds / baseline:.2f}",
                f"{temp_bytes(functions[name], weights, rows) / 2**20:.2f}",
            ]
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 4, 8], help="values of K")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7], help="leaf sizes n")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of interleaved timing")
    parser.add_argument("--skip-slow", action="store_true", help="leave out the four alternatives defined in this script")
    args = parser.parse_args()

    print(machine_line())
    headers = ["K", "n", "computation", "ms", "x combine", "temp MiB"]
    for num_tasks in args.tasks:
        for size in args.sizes:
            print(format_table(headers, measure(num_tasks, int(size), args.rounds, not args.skip_slow)), flush=True)


if __name__ == "__main__":
    main()
