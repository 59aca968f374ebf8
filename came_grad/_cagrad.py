"""CAGrad: conflict-averse gradient descent."""

import jax
import jax.numpy as jnp
import optax

from came_grad import _aggregation
from came_grad import _s1
from came_grad import _validation


def cagrad(
    c: _validation.ScalarOrSchedule = 0.5,
    rescale: int = 1,
    *,
    task_weights=None,
    num_tasks: int | None = None,
) -> optax.GradientTransformation:
    """Aggregate stacked task gradients with CAGrad.

    With `g0` the mean task gradient, the direction is `d = g0 + c ||g0||
    g_a / ||g_a||`, where `a` minimizes `a^T G m + c ||g0|| sqrt(a^T G a)`
    over the simplex. `rescale` 0 returns `d`, 1 returns `d / (1 + c**2)`
    and 2 returns `d / (1 + c)`. Multiply by K (for example with
    `optax.scale`) to match a summed loss, as the official NYUv2 script does.

    Departures from the official code: the dual is solved on the device
    (closed form for K = 2, an interior-point method otherwise) rather than
    with scipy's SLSQP, and the small constants the official code adds to
    norms are left out, so the update scales exactly with the gradients;
    when `g_a` vanishes the direction is `g0`.

    Args:
      c: ball radius `>= 0` relative to `||g0||`; float or schedule.
      rescale: 0, 1 or 2, as above.
      task_weights: optional non-negative weights applied to the task
        gradients before aggregation. Default: all 1.
      num_tasks: K, when known; implied by `task_weights`.

    Returns:
      An `optax.GradientTransformation`.

    Example:
      >>> import jax.numpy as jnp, came_grad
      >>> tx = came_grad.cagrad(c=0.5)
      >>> grads = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> updates, _ = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> [round(u, 4) for u in updates.tolist()]
      [0.6, 0.6]

    References:
      Liu, Liu, Jin, Stone and Liu, "Conflict-Averse Gradient Descent for
      Multi-task Learning", NeurIPS 2021. https://arxiv.org/abs/2110.14048
    """
    _validation.check_scalar("c", c, lower=0.0)
    if isinstance(rescale, jax.Array) or rescale not in (0, 1, 2):
        raise ValueError(
            f"rescale must be the Python int 0, 1 or 2, got {rescale!r}. Under "
            "optax.inject_hyperparams, list it in static_args=('rescale',)."
        )

    def coefficients(gram, count):
        radius_factor = jnp.maximum(_aggregation.evaluate(c, count), 0.0).astype(gram.dtype)
        direction = _s1.conflict_averse_coefficients(gram, radius_factor)
        if rescale == 1:
            direction = direction / (1.0 + radius_factor**2)
        elif rescale == 2:
            direction = direction / (1.0 + radius_factor)
        return direction

    weighting = _aggregation.stateless_weighting(coefficients)
    return _aggregation.from_weighting(weighting, task_weights=task_weights, num_tasks=num_tasks)
