"""UPGrad and DualProj: projections onto the dual cone of the task gradients."""

import jax
import jax.numpy as jnp
import optax

from came_grad import _aggregation
from came_grad import _qp


def dual_cone_coefficients(gram: jax.Array, combination: jax.Array) -> jax.Array:
    """Return `c` with `sum_i c_i h_i` the projection of `sum_i combination_i h_i` onto the dual cone.

    The dual cone is `{v : <h_i, v> >= 0 for all i}`. Writing the projection
    as `v = u + sum_i x_i h_i` with `x >= 0` (the KKT conditions), `x`
    solves the non-negative quadratic program
    `min 0.5 x^T G x + (G w)^T x`, and `c = w + x`.
    """
    return combination + _qp.nonnegative_qp(gram, gram @ combination)


def upgrad(task_weights=None, *, num_tasks: int | None = None) -> optax.GradientTransformation:
    """Aggregate stacked task gradients with UPGrad: the mean of their projections onto the dual cone.

    Each gradient `h_i` is projected onto the dual cone
    `{v : <h_j, v> >= 0 for all j}` and the K projections are averaged. The
    update is therefore non-conflicting (`<h_j, update> >= 0` for every
    task), equals the mean gradient when no pair of gradients conflicts, and
    scales with the gradients. Each projection is a K-dimensional
    non-negative quadratic program solved on the device.

    The preference vector of the paper is uniform here; pass `task_weights`
    to weight the gradients before the projection.

    Args:
      task_weights: optional non-negative weights applied to the task
        gradients before aggregation. Default: all 1.
      num_tasks: K, when known; implied by `task_weights`.

    Returns:
      An `optax.GradientTransformation`.

    Example:
      >>> import jax.numpy as jnp, came_grad
      >>> tx = came_grad.upgrad()
      >>> grads = jnp.array([[1.0, 0.0], [-2.0, 1.0]])
      >>> updates, _ = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> [round(u, 4) for u in updates.tolist()]
      [0.1, 0.7]

    References:
      Quinton and Rey, "Jacobian Descent for Multi-Objective Optimization",
      2024. https://arxiv.org/abs/2406.16232
    """

    def coefficients(gram, count):
        del count
        eye = jnp.eye(gram.shape[0], dtype=gram.dtype)
        projections = jax.vmap(lambda row: dual_cone_coefficients(gram, row))(eye)
        return jnp.mean(projections, axis=0)

    weighting = _aggregation.stateless_weighting(coefficients)
    return _aggregation.from_weighting(weighting, task_weights=task_weights, num_tasks=num_tasks)


def dualproj(task_weights=None, *, num_tasks: int | None = None) -> optax.GradientTransformation:
    """Aggregate stacked task gradients with DualProj: the mean gradient projected onto the dual cone.

    The update is the point of `{v : <h_j, v> >= 0 for all j}` closest to
    `mean_i h_i`. It is non-conflicting, equals the mean gradient when that
    conflicts with no task, and scales with the gradients.

    Args:
      task_weights: optional non-negative weights applied to the task
        gradients before aggregation. Default: all 1.
      num_tasks: K, when known; implied by `task_weights`.

    Returns:
      An `optax.GradientTransformation`.

    Example:
      >>> import jax.numpy as jnp, came_grad
      >>> tx = came_grad.dualproj()
      >>> grads = jnp.array([[1.0, 0.0], [-2.0, 1.0]])
      >>> updates, _ = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> [round(u, 4) for u in updates.tolist()]
      [0.0, 0.5]

    References:
      Quinton and Rey, "Jacobian Descent for Multi-Objective Optimization",
      2024. https://arxiv.org/abs/2406.16232
    """

    def coefficients(gram, count):
        del count
        num_tasks = gram.shape[0]
        mean = jnp.full((num_tasks,), 1.0 / num_tasks, gram.dtype)
        return dual_cone_coefficients(gram, mean)

    weighting = _aggregation.stateless_weighting(coefficients)
    return _aggregation.from_weighting(weighting, task_weights=task_weights, num_tasks=num_tasks)
