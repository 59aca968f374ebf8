"""Run every method on the two-objective toy problem of the CAGrad paper and plot the trajectories.

The problem (Liu et al., "Conflict-Averse Gradient Descent for Multi-task
Learning", NeurIPS 2021, Figure 1) has two losses of `x = (x1, x2)`. For
`x2 > 0` they are logarithmic valleys,

    f1 = log(max(|0.5 (-x1 - 7) - tanh(-x2)|, 5e-6)) + 6
    f2 = log(max(|0.5 (-x1 + 3) + tanh(-x2) + 2|, 5e-6)) + 6,

weighted by `max(tanh(x2 / 2), 0)`, and for `x2 < 0` they are the
quadratics `((x1 -/+ 7)**2 + 0.1 (x2 + 8)**2) / 10 - 20`, weighted by
`max(tanh(-x2 / 2), 0)`. The setup follows the public toy script of that
paper: starting points (-8.5, 7.5), (-8.5, -5) and (9, 9), Adam with
learning rate 1e-3 on the aggregated direction, and 100,000 steps.

The losses are mirror images, `f1(x1, x2) = f2(-x1, x2)`. For `x2 > 0`
the valleys hold Pareto-stationary points that are only local: the
quadratics reach much lower values, and the Pareto set is the segment near
`x2 = -8`, `-7 <= x1 <= 7`. Its balanced point, where `f1 = f2`, is near
`(0, -8)` and also has the lowest mean loss, about -15.

Seeds: the problem is deterministic, so seed s moves every starting point by
a normal offset of standard deviation 0.1 (seed 0 included) and seeds the
methods that draw random numbers (task orders, dropping).

Each final point is reported with its losses and its mean loss, and with
three checks. Pareto-stationary: the smallest-norm convex combination of
the two gradients has norm below 1e-2. On the Pareto set: Pareto-stationary
with `x2 < 0`. Balanced: on the Pareto set with `|f1 - f2|` below 5% of the
mean of `|f1|` and `|f2|`, which there means `|x1| < 0.27`.

Usage:
  PYTHONPATH=. python benchmarks/toy_cagrad.py --out benchmarks/toy_trajectories.png
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import came_grad
from common import METHODS, build_methods, format_table, machine_line

STARTS = np.array([[-8.5, 7.5], [-8.5, -5.0], [9.0, 9.0]], np.float32)
LEARNING_RATE = 1e-3
STEPS = 100_000
FLOOR = 5e-6
STATIONARY_NORM = 1e-2
BALANCE_GAP = 0.05


def toy_losses(x: jax.Array) -> jax.Array:
    """Return the two losses `[f1, f2]` of the toy problem at the point `x`."""
    x1, x2 = x[0], x[1]
    valley_weight = jnp.maximum(jnp.tanh(0.5 * x2), 0.0)
    bowl_weight = jnp.maximum(jnp.tanh(-0.5 * x2), 0.0)

    valley_1 = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 - 7.0) - jnp.tanh(-x2)), FLOOR)) + 6.0
    valley_2 = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 + 3.0) + jnp.tanh(-x2) + 2.0), FLOOR)) + 6.0
    bowl_1 = ((-x1 + 7.0) ** 2 + 0.1 * (-x2 - 8.0) ** 2) / 10.0 - 20.0
    bowl_2 = ((-x1 - 7.0) ** 2 + 0.1 * (-x2 - 8.0) ** 2) / 10.0 - 20.0

    return jnp.stack([valley_1 * valley_weight + bowl_1 * bowl_weight, valley_2 * valley_weight + bowl_2 * bowl_weight])


def min_norm_combination(grads: np.ndarray) -> float:
    """Return the norm of the smallest-norm convex combination of two gradients."""
    difference = grads[0] - grads[1]
    denominator = float(difference @ difference)
    weight = 0.5 if denominator == 0 else float(np.clip(-(grads[1] @ difference) / denominator, 0.0, 1.0))
    return float(np.linalg.norm(weight * grads[0] + (1 - weight) * grads[1]))


def run_method(transformation, starts: np.ndarray, steps: int, record_every: int):
    """Optimize from every starting point at once and return the recorded trajectories `[starts, T, 2]`."""
    tx = optax.chain(transformation, optax.adam(LEARNING_RATE))
    value_and_task_grads = came_grad.value_and_task_grads(toy_losses)

    def run_one(start):
        def step(carry, _):
            x, state = carry
            _, task_grads = value_and_task_grads(x)
            updates, state = tx.update(task_grads, state, x)
            return (optax.apply_updates(x, updates), state), None

        def record(carry, _):
            carry, _ = jax.lax.scan(step, carry, None, length=record_every)
            return carry, carry[0]

        _, trajectory = jax.lax.scan(record, (start, tx.init(start)), None, length=steps // record_every)
        return jnp.concatenate([start[None], trajectory])

    return np.asarray(jax.jit(jax.vmap(run_one))(jnp.asarray(starts)))


def describe(point: np.ndarray) -> dict:
    """Return the losses and the Pareto and balance checks of a final point."""
    losses, grads = jax.jit(came_grad.value_and_task_grads(toy_losses))(jnp.asarray(point))
    losses = np.asarray(losses, np.float64)
    stationary = min_norm_combination(np.asarray(grads, np.float64)) < STATIONARY_NORM
    on_pareto_set = stationary and point[1] < 0
    gap = abs(losses[0] - losses[1])
    return {
        "f1": losses[0],
        "f2": losses[1],
        "mean": losses.mean(),
        "stationary": stationary,
        "pareto": on_pareto_set,
        "balanced": on_pareto_set and gap < BALANCE_GAP * np.abs(losses).mean(),
    }


def plot(trajectories: dict, path: str) -> None:
    """Draw the mean-loss contours and each method's trajectories from the seed-0 starting points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(-10, 10, 201)
    x1, x2 = np.meshgrid(grid, grid)
    points = jnp.asarray(np.stack([x1.ravel(), x2.ravel()], axis=1), jnp.float32)
    mean_loss = np.asarray(jax.vmap(toy_losses)(points)).mean(axis=1).reshape(x1.shape)

    columns = 4
    rows = -(-len(trajectories) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.6 * rows), squeeze=False)
    for axis, (name, paths) in zip(axes.ravel(), trajectories.items()):
        axis.contourf(x1, x2, mean_loss, levels=30, cmap="Greys")
        for path_points in paths:
            axis.plot(path_points[:, 0], path_points[:, 1], linewidth=1.5)
            axis.plot(path_points[0, 0], path_points[0, 1], "o", color="black", markersize=4)
            axis.plot(path_points[-1, 0], path_points[-1, 1], "*", color="red", markersize=9)
        axis.set_title(name)
        axis.set_xlim(-10, 10)
        axis.set_ylim(-10, 10)
    for axis in axes.ravel()[len(trajectories) :]:
        axis.axis("off")
    figure.suptitle("CAGrad toy problem: trajectories from three starting points (seed 0), mean-loss contours")
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds")
    parser.add_argument("--steps", type=int, default=STEPS, help="Adam steps per run")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="came_grad factory names")
    parser.add_argument("--out", default="benchmarks/toy_trajectories.png", help="PNG file of the trajectories")
    args = parser.parse_args()
    record_every = max(1, args.steps // 1000)

    print(machine_line())
    per_start_rows, summary_rows, trajectories = [], [], {}
    for name in args.methods:
        finals = []
        start_time = time.perf_counter()
        for seed in range(args.seeds):
            transformation = build_methods(2, seed=seed, names=[name]).get(name)
            if transformation is None:
                break
            offsets = np.random.default_rng(seed).normal(0.0, 0.1, STARTS.shape).astype(np.float32)
            paths = run_method(transformation, STARTS + offsets, args.steps, record_every)
            if seed == 0:
                trajectories[name] = paths
            finals.append([describe(path[-1]) | {"point": path[-1]} for path in paths])
        if not finals:
            print(f"skipping {name}: not exported by this version of came_grad")
            continue
        seconds = time.perf_counter() - start_time

        for start_index, start in enumerate(STARTS):
            results = [seed_results[start_index] for seed_results in finals]
            points = np.stack([result["point"] for result in results])
            means = np.array([result["mean"] for result in results])
            per_start_rows.append(
                [
                    name,
                    f"({start[0]:g}, {start[1]:g})",
                    f"({points[:, 0].mean():.2f} ± {points[:, 0].std():.2f}, {points[:, 1].mean():.2f} ± {points[:, 1].std():.2f})",
                    f"{np.mean([r['f1'] for r in results]):.2f}",
                    f"{np.mean([r['f2'] for r in results]):.2f}",
                    f"{means.mean():.3f} ± {means.std():.3f}",
                    f"{sum(r['stationary'] for r in results)}/{len(results)}",
                    f"{sum(r['pareto'] for r in results)}/{len(results)}",
                    f"{sum(r['balanced'] for r in results)}/{len(results)}",
                ]
            )

        all_results = [result for seed_results in finals for result in seed_results]
        all_means = np.array([result["mean"] for result in all_results])
        summary_rows.append(
            [
                name,
                f"{all_means.mean():.3f} ± {all_means.std():.3f}",
                f"{sum(r['stationary'] for r in all_results)}/{len(all_results)}",
                f"{sum(r['pareto'] for r in all_results)}/{len(all_results)}",
                f"{sum(r['balanced'] for r in all_results)}/{len(all_results)}",
                f"{seconds:.0f}",
            ]
        )
        print(f"{name}: done in {seconds:.0f} s", flush=True)

    print(
        format_table(
            ["method", "start", "final x (mean ± std)", "f1", "f2", "mean loss", "stationary", "Pareto set", "balanced"],
            per_start_rows,
        )
    )
    print(
        format_table(
            ["method", "mean loss over runs", "stationary", "Pareto set", "balanced", "seconds"], summary_rows
        )
    )
    plot(trajectories, args.out)
    print(f"trajectories written to {args.out}")


if __name__ == "__main__":
    main()
