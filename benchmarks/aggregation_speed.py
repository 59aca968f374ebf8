"""Time the jitted update of every aggregation method against the plain weighted sum.

The parameters are P float32 values split over a pytree like a network's:
four large weight matrices and 48 small leaves such as biases and norm
scales. For K tasks the script builds one set of stacked task gradients and
times, in interleaved rounds:

* the linear-scalarization combination `sum_i w_i g_i` leaf by leaf, in the
  fastest exact form found (`tensordot` over the task axis or an unrolled
  sum, whichever is faster here), the floor that any method pays;
* `tx.update(task_grads, state, params)` of every method exported by
  `came_grad` (the list `common.METHODS`; names that the installed version
  lacks are skipped);
* when torch and torchjd are importable, torchjd's aggregators on the same
  Jacobian, converted once to a `[K, P]` tensor outside the timing.

It prints the median times, their ratio to the combination, and for
CAME-Grad the temporary memory that XLA reports for the compiled update.

Usage:
  PYTHONPATH=. python benchmarks/aggregation_speed.py --tasks 2 4 8 --sizes 1e5 1e6 1e7
"""

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np

import came_grad
from common import build_methods, format_table, interleaved_medians, machine_line, temp_bytes

# torchjd aggregators compared when torchjd is installed: name -> factory.
TORCHJD_AGGREGATORS = {
    "torchjd Mean": lambda aggregation: aggregation.Mean(),
    "torchjd CAGrad": lambda aggregation: aggregation.CAGrad(c=0.5),
    "torchjd UPGrad": lambda aggregation: aggregation.UPGrad(),
    "torchjd MGDA": lambda aggregation: aggregation.MGDA(),
}

SMALL_LEAF_SIZES = (64, 256, 512, 1024)
NUM_SMALL_LEAVES = 48
LARGE_LEAF_SHARES = (0.4, 0.3, 0.2, 0.1)


def leaf_shapes(total: int) -> list[tuple[int, ...]]:
    """Split `total` parameters into four large matrices and 48 small vectors."""
    small = [(SMALL_LEAF_SIZES[index % len(SMALL_LEAF_SIZES)],) for index in range(NUM_SMALL_LEAVES)]
    remaining = total - sum(shape[0] for shape in small)
    if remaining <= 0:
        raise ValueError(f"P = {total} is too small for the pytree; use P >= 100000.")

    large = []
    for share in LARGE_LEAF_SHARES[:-1]:
        size = int(remaining * share)
        columns = 256
        large.append((size // columns, columns))
    used = sum(math.prod(shape) for shape in large)
    large.append((remaining - used,))
    return large + small


def make_problem(num_tasks: int, total: int, seed: int = 0):
    """Return parameters and stacked task gradients, both dicts of float32 arrays."""
    rng = np.random.default_rng(seed)
    shapes = leaf_shapes(total)
    params = {f"leaf_{index:02d}": jnp.zeros(shape, jnp.float32) for index, shape in enumerate(shapes)}
    task_grads = {
        name: jnp.asarray(rng.standard_normal((num_tasks, *leaf.shape), dtype=np.float32))
        for name, leaf in params.items()
    }
    return params, task_grads


def tensordot_sum(weights, task_grads):
    return jax.tree_util.tree_map(lambda leaf: jnp.tensordot(weights, leaf, axes=1), task_grads)


def unrolled_sum(weights, task_grads):
    def leaf_sum(leaf):
        total = weights[0] * leaf[0]
        for index in range(1, leaf.shape[0]):
            total = total + weights[index] * leaf[index]
        return total

    return jax.tree_util.tree_map(leaf_sum, task_grads)


def jitted_update(transformation, params):
    state = transformation.init(params)

    @jax.jit
    def update(weights, task_grads):
        del weights
        updates, _ = transformation.update(task_grads, state, params)
        return updates

    return update


def torchjd_functions(task_grads):
    """Return torchjd aggregators as functions of a `[K, P]` tensor, and that tensor.

    Returns `({}, None)` when torch or torchjd is not installed.
    """
    try:
        import torch
        from torchjd import aggregation
    except ImportError:
        return {}, None

    leaves = jax.tree_util.tree_leaves(task_grads)
    num_tasks = leaves[0].shape[0]
    jacobian = torch.from_numpy(np.concatenate([np.asarray(leaf).reshape(num_tasks, -1) for leaf in leaves], axis=1))
    functions = {}
    for name, factory in TORCHJD_AGGREGATORS.items():
        try:
            aggregator = factory(aggregation)
        except ImportError as error:
            print(f"skipping {name}: {error}")
            continue
        functions[name] = lambda matrix, aggregator=aggregator: aggregator(matrix)
    return functions, jacobian


def measure(num_tasks: int, total: int, rounds: int, with_torchjd: bool):
    """Time every computation for one (K, P) and return table rows and CAME-Grad's memory."""
    params, task_grads = make_problem(num_tasks, total)
    weights = jnp.ones((num_tasks,), jnp.float32)

    combinations = {"LS combination (tensordot)": jax.jit(tensordot_sum), "LS combination (unrolled)": jax.jit(unrolled_sum)}
    methods = {name: jitted_update(tx, params) for name, tx in build_methods(num_tasks).items()}
    jax_functions = {**combinations, **methods}
    jax_times = dict(zip(jax_functions, interleaved_medians(list(jax_functions.values()), (weights, task_grads), rounds)))

    times = dict(jax_times)
    if with_torchjd:
        torch_functions, jacobian = torchjd_functions(task_grads)
        if torch_functions:
            times.update(zip(torch_functions, interleaved_medians(list(torch_functions.values()), (jacobian,), rounds)))

    baseline = min(times[name] for name in combinations)
    rows = [
        [num_tasks, f"{total:.0e}", name, f"{milliseconds:.3f}", f"{milliseconds / baseline:.2f}"]
        for name, milliseconds in times.items()
    ]

    came_update = jitted_update(came_grad.came_grad(num_tasks=num_tasks), params)
    stacked = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(task_grads))
    memory = [
        num_tasks,
        f"{total:.0e}",
        f"{stacked / 2**20:.1f}",
        f"{stacked / num_tasks / 2**20:.1f}",
        f"{temp_bytes(came_update, weights, task_grads) / 2**20:.2f}",
        f"{temp_bytes(combinations['LS combination (tensordot)'], weights, task_grads) / 2**20:.2f}",
    ]
    return rows, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 4, 8], help="values of K")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7], help="values of P")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of interleaved timing")
    parser.add_argument(
        "--torchjd-max-size", type=float, default=1e6, help="largest P at which torchjd is timed (0 to skip torchjd)"
    )
    args = parser.parse_args()

    print(machine_line())
    headers = ["K", "P", "computation", "median ms", "x LS combination"]
    memory_rows = []
    for total in args.sizes:
        for num_tasks in args.tasks:
            rows, memory = measure(num_tasks, int(total), args.rounds, total <= args.torchjd_max_size)
            print(format_table(headers, rows), flush=True)
            memory_rows.append(memory)

    print("Temporary memory of the compiled CAME-Grad update (output and arguments excluded):")
    print(
        format_table(
            ["K", "P", "stacked gradients MiB", "one parameter copy MiB", "CAME-Grad temp MiB", "LS combination temp MiB"],
            memory_rows,
        )
    )
    print(machine_line())


if __name__ == "__main__":
    main()
