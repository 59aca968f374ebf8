"""CAME-Grad: conflict-averse, magnitude-enhanced aggregation of task gradients."""

import jax
import jax.numpy as jnp
import optax

from came_grad import _aggregation
from came_grad import _s1
from came_grad import _validation


def came_grad_coefficients(gram: jax.Array, rho, kappa, nu) -> jax.Array:
    """Return the K coefficients of the CAME-Grad update for a (normalized) Gram matrix.

    The update is `sum_i c_i h_i` over the weighted task gradients `h_i`.

    Args:
      gram: K x K Gram matrix of the weighted task gradients, divided by any
        positive constant.
      rho: conflict radius, relative to the norm of the mean gradient.
      kappa: magnitude gain of the rectified direction.
      nu: fusion coefficient with the joint (summed) gradient.

    Returns:
      The coefficient vector `c`, in the Gram matrix's dtype.
    """
    num_tasks = gram.shape[0]
    dtype = gram.dtype
    ones = jnp.ones((num_tasks,), dtype)

    # S1: the direction in the ball ||u - mu|| <= rho ||mu|| that maximizes the
    # smallest task inner product, mu being the mean of the weighted gradients.
    rectified = _s1.conflict_averse_coefficients(gram, jnp.asarray(rho, dtype))

    # S2: give the rectified direction kappa times the joint gradient's norm.
    joint_squared = ones @ gram @ ones
    rectified_squared = rectified @ gram @ rectified
    vanishing = _validation.vanishing_squared_norm(gram)
    degenerate = (joint_squared <= vanishing) | (rectified_squared <= vanishing)
    joint_norm = jnp.sqrt(jnp.maximum(joint_squared, 0.0))
    rectified_norm = jnp.sqrt(jnp.maximum(rectified_squared, 0.0))
    gain = jnp.asarray(kappa, dtype) * joint_norm / jnp.where(degenerate, 1.0, rectified_norm)
    enhanced = jnp.where(degenerate, 0.0, gain * rectified)

    # S3: fuse with the joint gradient of the linearly scalarized loss.
    nu = jnp.asarray(nu, dtype)
    return (1.0 - nu) * enhanced + nu * ones


def came_grad(
    rho: _validation.ScalarOrSchedule = 0.5,
    kappa: _validation.ScalarOrSchedule = 1.5,
    nu: _validation.ScalarOrSchedule = 0.2,
    task_weights=None,
    *,
    num_tasks: int | None = None,
) -> optax.GradientTransformation:
    """Aggregate stacked task gradients with CAME-Grad.

    CAME-Grad (Conflict-Averse Magnitude-Enhanced Gradient Descent) replaces
    the weighted sum of task gradients `g_joint = sum_i w_i g_i` by three
    stages on the weighted gradients `h_i = w_i g_i`, with `mu = g_joint / K`:

    1. S1, direction rectification (published): the point `u_rect` of the
       ball `||u - mu|| <= rho ||mu||` that maximizes `min_i <h_i, u>`, found
       through the CAGrad dual problem. Reconstruction choices: the task
       weights are applied before S1, and there is no CAGrad division by
       `1 + rho**2`.
    2. S2, energy injection (reconstructed): `u_en = kappa ||g_joint||
       u_rect / ||u_rect||`.
    3. S3, fusion (published formula): `(1 - nu) u_en + nu g_joint`.

    Degenerate cases: when zero lies in the convex hull of the gradients
    (Pareto-stationary), `u_rect = mu`; when `mu` or `u_rect` vanishes,
    `u_en = 0`. All-zero gradients give a zero update. A combination counts
    as vanishing when its norm is below about 3e-3 (float32) of the largest
    task-gradient norm, because the Gram matrix cannot resolve smaller
    norms of nearly cancelling gradients. Non-finite gradients give a
    non-finite update, so `optax.apply_if_finite` wrapped around the
    optimizer that follows in the chain skips the step.

    `nu = 1` gives linear scalarization exactly; `rho = 0` gives
    `((1 - nu) kappa + nu) g_joint`.

    .. warning::
      Put this transformation first in a chain: it consumes per-task
      gradients with a leading task axis, which no other optax transformation
      expects. `optax.MultiSteps` does not fit it for the same reason.

    Args:
      rho: conflict radius `>= 0`, relative to `||mu||`; float or schedule.
      kappa: magnitude gain `> 0`; float or schedule.
      nu: fusion coefficient in `[0, 1]`; float or schedule. Schedule values
        outside the ranges are clipped into them at run time.
      task_weights: optional non-negative task weights `w_i`, one per task.
      num_tasks: K, when known; implied by `task_weights`. Needed for
        `came_grad.diagnostics`.

    Returns:
      An `optax.GradientTransformation`.

    Example:
      >>> import jax, jax.numpy as jnp, optax, came_grad
      >>> params = jnp.array([1.0, -2.0])
      >>> def losses(p):
      ...   return jnp.stack([jnp.sum((p - 1.0) ** 2), jnp.sum((p + 1.0) ** 2)])
      >>> tx = optax.chain(came_grad.came_grad(), optax.adam(0.1))
      >>> state = tx.init(params)
      >>> value, task_grads = came_grad.value_and_task_grads(losses)(params)
      >>> updates, state = tx.update(task_grads, state, params)
      >>> optax.apply_updates(params, updates).shape
      (2,)

    References:
      Zhang, Hao, Wang and Guo, "The Double Dilemma in Multi-Task Radiology
      Report Generation: A Gradient Dynamics Analysis and Solution", ICML
      2026. https://arxiv.org/abs/2605.22635
    """
    _validation.check_scalar("rho", rho, lower=0.0)
    _validation.check_scalar("kappa", kappa, lower=0.0, lower_inclusive=False)
    _validation.check_scalar("nu", nu, lower=0.0, upper=1.0)

    def coefficients(gram, count):
        rho_now = jnp.maximum(_aggregation.evaluate(rho, count), 0.0)
        kappa_now = jnp.maximum(_aggregation.evaluate(kappa, count), 0.0)
        nu_now = jnp.clip(_aggregation.evaluate(nu, count), 0.0, 1.0)
        return came_grad_coefficients(gram, rho_now, kappa_now, nu_now)

    weighting = _aggregation.stateless_weighting(coefficients)
    return _aggregation.from_weighting(weighting, task_weights=task_weights, num_tasks=num_tasks)
