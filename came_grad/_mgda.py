"""MGDA: the minimum-norm point of the convex hull of the task gradients."""

import optax

from came_grad import _aggregation
from came_grad import _qp


def mgda(task_weights=None, *, num_tasks: int | None = None) -> optax.GradientTransformation:
    """Aggregate stacked task gradients with MGDA, the minimum-norm convex combination.

    The update is `d = sum_i a_i h_i` with `a` on the simplex minimizing
    `||d||`. Then `<h_i, d> >= ||d||^2 >= 0` for every task, so no task's
    loss increases to first order, and `d = 0` exactly at a
    Pareto-stationary point. For K = 2 the weights have a closed form; for
    K > 2 a fixed budget of accelerated projected gradient steps on the
    simplex is followed by an exact solve on the support it finds.

    Departures from the official MGDA-UB code: the weights are computed from
    the gradients passed in. The upper-bound speedup (weights from the
    gradients with respect to a shared representation) is left to the
    caller. The gradients are not normalized by losses or norms first (pass
    `task_weights` for a fixed rescaling). The simplex problem is solved on
    the device, not by the Frank-Wolfe loop of the official code.

    Args:
      task_weights: optional non-negative weights applied to the task
        gradients before aggregation. Default: all 1.
      num_tasks: K, when known; implied by `task_weights`.

    Returns:
      An `optax.GradientTransformation`.

    Example:
      >>> import jax.numpy as jnp, came_grad
      >>> tx = came_grad.mgda()
      >>> grads = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> updates, _ = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> updates.tolist()
      [0.5, 0.5]

    References:
      Sener and Koltun, "Multi-Task Learning as Multi-Objective
      Optimization", NeurIPS 2018. https://arxiv.org/abs/1810.04650
    """

    weighting = _aggregation.stateless_weighting(lambda gram, count: _qp.min_norm_simplex(gram))
    return _aggregation.from_weighting(weighting, task_weights=task_weights, num_tasks=num_tasks)
