"""IMTL-G: impartial multi-task learning, gradient part."""

import jax
import jax.numpy as jnp
import optax

from came_grad import _aggregation

# Squared norms at or below this (the Gram matrix has a largest diagonal
# entry of 1) count as zero gradients, which get coefficient 0.
_TINY_SQUARED = 1e-24


def imtl_g_coefficients(gram: jax.Array) -> jax.Array:
    """Return `a` with `sum_i a_i = 1` such that `d = sum_i a_i h_i` has equal projections on every `h_i / ||h_i||`.

    With `u_i = h_i / ||h_i||` and `M[i, j] = <u_i, h_j> = G[i, j] / ||h_i||`,
    the conditions `<d, u_i> = t` for all i and `sum_i a_i = 1` form the
    bordered linear system `[[M, -1], [1^T, 0]] [a; t] = [0; 1]`. Zero
    gradients drop out (their row becomes `a_i = 0`). The system is solved by
    least squares, which gives its minimum-norm solution when it is singular.
    """
    num_tasks = gram.shape[0]
    dtype = gram.dtype
    diagonal = jnp.diagonal(gram)
    active = diagonal > _TINY_SQUARED
    norms = jnp.sqrt(jnp.where(active, diagonal, 1.0))
    eye = jnp.eye(num_tasks, dtype=dtype)

    projections = gram / norms[:, None]
    rows = jnp.where(active[:, None], projections, eye)
    system = jnp.zeros((num_tasks + 1, num_tasks + 1), dtype)
    system = system.at[:num_tasks, :num_tasks].set(rows)
    system = system.at[:num_tasks, num_tasks].set(-active.astype(dtype))
    system = system.at[num_tasks, :num_tasks].set(active.astype(dtype))
    right = jnp.zeros((num_tasks + 1,), dtype).at[num_tasks].set(1.0)

    solution = jnp.linalg.pinv(system) @ right
    return jnp.where(active, solution[:num_tasks], 0.0)


def imtl_g(task_weights=None, *, num_tasks: int | None = None) -> optax.GradientTransformation:
    """Aggregate stacked task gradients with IMTL-G.

    The update `d = sum_i a_i h_i`, with `sum_i a_i = 1`, has the same
    projection onto every unit task gradient: `<d, h_i / ||h_i||>` is equal
    for all tasks with a nonzero gradient. The weights depend only on the
    directions' geometry and the norm ratios, so the update scales with the
    gradients.

    Departures from the paper: the paper eliminates the first task and
    solves a (K - 1) x (K - 1) system. Here the equivalent bordered (K + 1)
    system is solved by least squares, which treats all tasks alike
    and stays finite for rank-deficient gradients. Zero gradients are left
    out of the system.

    Args:
      task_weights: optional non-negative weights applied to the task
        gradients before aggregation. Default: all 1.
      num_tasks: K, when known; implied by `task_weights`.

    Returns:
      An `optax.GradientTransformation`.

    Example:
      >>> import jax.numpy as jnp, came_grad
      >>> tx = came_grad.imtl_g()
      >>> grads = jnp.array([[1.0, 0.0], [0.0, 2.0]])
      >>> updates, _ = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> [round(u, 4) for u in updates.tolist()]
      [0.6667, 0.6667]

    References:
      Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang, "Towards Impartial
      Multi-task Learning", ICLR 2021. https://openreview.net/forum?id=IMPnRXEWpvr
    """

    weighting = _aggregation.stateless_weighting(lambda gram, count: imtl_g_coefficients(gram))
    return _aggregation.from_weighting(weighting, task_weights=task_weights, num_tasks=num_tasks)
