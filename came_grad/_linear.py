"""Linear scalarization: the weighted sum of task gradients."""

import jax.numpy as jnp
import optax

from came_grad import _aggregation


def linear_scalarization(task_weights=None, *, num_tasks: int | None = None) -> optax.GradientTransformation:
    """Aggregate stacked task gradients by their weighted sum `sum_i w_i g_i`.

    This is the gradient of the scalarized loss `sum_i w_i L_i`, the
    baseline that multi-task methods are compared against.

    Args:
      task_weights: optional non-negative weights `w_i`, one per task. Default: all 1.
      num_tasks: K, when known; implied by `task_weights`.

    Returns:
      An `optax.GradientTransformation`.

    Example:
      >>> import jax.numpy as jnp, came_grad
      >>> tx = came_grad.linear_scalarization(task_weights=(1.0, 4.0))
      >>> updates, _ = tx.update(jnp.array([[1.0, 0.0], [0.0, 1.0]]), tx.init(jnp.zeros(2)))
      >>> updates.tolist()
      [1.0, 4.0]
    """

    weighting = _aggregation.stateless_weighting(lambda gram, count: jnp.ones((gram.shape[0],), gram.dtype))
    return _aggregation.from_weighting(weighting, task_weights=task_weights, num_tasks=num_tasks)
