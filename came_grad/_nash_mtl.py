"""Nash-MTL: the Nash bargaining solution of the task gradients."""

import jax
import jax.numpy as jnp
import optax

from came_grad import _aggregation

# Damped Newton steps per update. The damped phase lowers the objective by at
# least 0.09 per step and the quadratic phase needs about five more steps. So
# 40 steps converge from the cold start on well-posed problems, and later
# updates start from the previous solution.
_NEWTON_STEPS = 40

# Squared norms at or below this (the Gram matrix has a largest diagonal
# entry of 1) count as zero gradients, which get coefficient 0.
_TINY_SQUARED = 1e-24


def nash_mtl_coefficients(gram: jax.Array, start: jax.Array) -> jax.Array:
    """Return `a > 0` solving `(G / ||G||_F) a = 1 / a`, by damped Newton from `start`.

    The solution is the minimizer of the strictly convex, self-concordant
    function `F(a) = 0.5 a^T G a - sum_i log a_i`. The damped Newton step
    `a <- a - D / (1 + lambda)`, with `D` the Newton step and `lambda` the
    Newton decrement, stays inside `a > 0` and converges from any start.
    Tasks with a zero gradient are decoupled (their row becomes `a_i = 1 /
    a_i`) and their coefficient is set to 0 afterwards.

    When zero lies in the convex hull of the gradients (Pareto-stationary)
    `F` is unbounded below, so there is no solution. The fixed budget then
    returns a finite, large `a` along the stationary combination.

    Args:
      gram: K x K Gram matrix of the weighted task gradients.
      start: positive starting point, or any vector with a non-positive or
        non-finite entry to start from `1 / sqrt(diag(G))`.

    Returns:
      `(coefficients, solution)`: the coefficients (0 for zero gradients)
      and the positive solution to store as the next starting point.
    """
    num_tasks = gram.shape[0]
    dtype = gram.dtype
    diagonal = jnp.diagonal(gram)
    active = diagonal > _TINY_SQUARED
    both_active = jnp.outer(active, active)

    # The same normalization as the official code, the Frobenius norm of G.
    frobenius = jnp.sqrt(jnp.sum(gram * gram))
    normalized = gram / jnp.where(frobenius > 0, frobenius, 1.0)
    system = jnp.where(both_active, normalized, 0.0) + jnp.diag(~active).astype(dtype)
    system = 0.5 * (system + system.T)

    cold_start = 1.0 / jnp.sqrt(jnp.diagonal(system))
    start = start.astype(dtype)
    usable = jnp.all(jnp.isfinite(start)) & jnp.all(start > 0)
    weights = jnp.where(usable, start, cold_start)

    def newton_step(_, weights):
        gradient = system @ weights - 1.0 / weights
        hessian = system + jnp.diag(1.0 / (weights * weights))
        step = jnp.linalg.solve(hessian, gradient)
        decrement = jnp.sqrt(jnp.maximum(gradient @ step, 0.0))
        moved = weights - step / (1.0 + decrement)
        # In exact arithmetic the damped step stays positive; guard against rounding.
        valid = jnp.all(jnp.isfinite(moved)) & jnp.all(moved > 0)
        return jnp.where(valid, moved, weights)

    solution = jax.lax.fori_loop(0, _NEWTON_STEPS, newton_step, weights)
    return jnp.where(active, solution, 0.0), solution


def nash_mtl(task_weights=None, *, num_tasks: int | None = None) -> optax.GradientTransformation:
    """Aggregate stacked task gradients with Nash-MTL.

    The update is `d = sum_i a_i h_i` with `a > 0` solving `G a = 1 / a`
    (elementwise), that is `<h_i, d> = 1 / a_i` for every task: the Nash
    bargaining solution, which maximizes `sum_i log <h_i, d>` over a ball.
    The Gram matrix is first divided by its Frobenius norm, as in the
    official code, so the weights do not depend on the gradients' scale and
    the update scales with the gradients. The state keeps the last solution
    as the next starting point.

    Departures from the official code: the official code solves the
    bargaining problem on the host with cvxpy (a sequence of convex
    approximations) and offers extra options such as recomputing the
    weights only every few steps and clipping the update norm. Here a fixed
    budget of damped Newton steps solves `G a = 1 / a` on the device, and
    norm clipping is left to `optax.clip_by_global_norm` later in the
    chain. Zero gradients get weight 0. At a Pareto-stationary point there
    is no solution and the weights are those reached by the fixed budget.

    Args:
      task_weights: optional non-negative weights applied to the task
        gradients before aggregation. Default: all 1.
      num_tasks: K. Required, because the state holds the last solution;
        implied by `task_weights`.

    Returns:
      An `optax.GradientTransformation`.

    Raises:
      ValueError: if neither `num_tasks` nor `task_weights` is given.

    Example:
      >>> import jax.numpy as jnp, came_grad
      >>> tx = came_grad.nash_mtl(num_tasks=2)
      >>> grads = jnp.array([[1.0, 0.0], [0.0, 2.0]])
      >>> updates, _ = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> [round(u, 4) for u in updates.tolist()]
      [2.0305, 2.0305]

    References:
      Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik and Fetaya,
      "Multi-Task Learning as a Bargaining Game", ICML 2022.
      https://arxiv.org/abs/2202.01017
    """

    def init(known_tasks):
        if known_tasks is None:
            raise ValueError(
                "nash_mtl keeps the last solution in its state as a warm start, so K must be known when "
                "the transformation is built; pass num_tasks=K or task_weights."
            )
        return jnp.zeros((known_tasks,), jnp.float32)

    def update(gram, previous, key, count):
        del key, count
        coefficients, solution = nash_mtl_coefficients(gram, previous)
        return coefficients, solution.astype(previous.dtype)

    weighting = _aggregation.Weighting(init=init, update=update)
    return _aggregation.from_weighting(weighting, task_weights=task_weights, num_tasks=num_tasks)
