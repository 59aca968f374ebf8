"""ConFIG: conflict-free inverse gradients."""

import jax
import jax.numpy as jnp
import optax

from came_grad import _aggregation

# Squared norms at or below this (the Gram matrix has a largest diagonal
# entry of 1) count as zero gradients, which get coefficient 0.
_TINY_SQUARED = 1e-24


def config_coefficients(gram: jax.Array) -> jax.Array:
    """Return `c` with `sum_i c_i h_i = (sum_i <h_i, e>) e` for the ConFIG direction `e`.

    With unit gradients `u_i = h_i / ||h_i||`, `v = (U^T)^+ 1` is the
    minimum-norm vector with `<u_i, v> = 1` for all i (least squares when no
    such vector exists). It lies in the span of the `u_i`, so `v = sum_j b_j u_j`
    with `C b = 1` for the cosine matrix `C[i, j] = <u_i, u_j>`, solved
    here with the pseudo-inverse. Then `e = v / ||v||`.
    """
    num_tasks = gram.shape[0]
    dtype = gram.dtype
    diagonal = jnp.diagonal(gram)
    active = diagonal > _TINY_SQUARED
    norms = jnp.sqrt(jnp.where(active, diagonal, 1.0))
    both_active = jnp.outer(active, active)

    cosine = jnp.where(both_active, gram / jnp.outer(norms, norms), 0.0)
    targets = active.astype(dtype)
    unit_weights = jnp.linalg.pinv(cosine, hermitian=True) @ targets
    direction = jnp.where(active, unit_weights / norms, 0.0)

    squared_norm = direction @ gram @ direction
    projection_sum = jnp.sum(gram @ direction)
    degenerate = ~(squared_norm > _TINY_SQUARED)
    scale = projection_sum / jnp.where(degenerate, 1.0, squared_norm)
    return jnp.where(degenerate, 0.0, scale * direction)


def config_aggregation(task_weights=None, *, num_tasks: int | None = None) -> optax.GradientTransformation:
    """Aggregate stacked task gradients with ConFIG (conflict-free inverse gradients).

    The direction `e` is the normalized minimum-norm solution of
    `<h_i / ||h_i||, v> = 1` for all tasks, so it makes the same angle with
    every task gradient (positive inner products with all of them whenever
    the unit gradients are linearly independent). The update is
    `(sum_i <h_i, e>) e`, the direction scaled by the sum of the
    projections of the task gradients on it. It scales with the gradients.

    Zero gradients are left out of the system. The pseudo-inverse uses its
    default cutoff for small singular values, so nearly parallel unit
    gradients are treated as rank-deficient.

    Args:
      task_weights: optional non-negative weights applied to the task
        gradients before aggregation. Default: all 1.
      num_tasks: K, when known; implied by `task_weights`.

    Returns:
      An `optax.GradientTransformation`.

    Example:
      >>> import jax.numpy as jnp, came_grad
      >>> tx = came_grad.config_aggregation()
      >>> grads = jnp.array([[1.0, 0.0], [0.0, 2.0]])
      >>> updates, _ = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> [round(u, 4) for u in updates.tolist()]
      [1.5, 1.5]

    References:
      Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of Physics
      Informed Neural Networks", 2024. https://arxiv.org/abs/2408.11104
    """

    weighting = _aggregation.stateless_weighting(lambda gram, count: config_coefficients(gram))
    return _aggregation.from_weighting(weighting, task_weights=task_weights, num_tasks=num_tasks)
