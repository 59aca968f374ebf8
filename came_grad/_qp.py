"""Small quadratic programs over K task weights, solved on the device with a fixed budget.

Two problems appear in the methods of this package:

* the minimum-norm point of the convex hull of the task gradients,
  `min_a a^T G a` over the probability simplex (MGDA), and
* the projection onto the dual cone `{v : <g_i, v> >= 0 for all i}`, whose
  dual is the non-negative quadratic program
  `min_x 0.5 x^T G x + p^T x` subject to `x >= 0` (UPGrad, DualProj).

Both run accelerated projected gradient descent with adaptive restart for a
fixed number of steps, then solve the optimality conditions exactly on the
support it found and keep that solution when it is feasible and no worse.
Everything works on K x K matrices under `jit`, with no host callbacks.
"""

import jax
import jax.numpy as jnp

# Projected gradient steps before the exact solve on the support. With the
# Gram matrix normalized to a largest diagonal entry of 1, 256 restarted
# accelerated steps reach the support of well-posed problems with K <= 32.
_PROJECTED_STEPS = 256

# Weights below this fraction of the largest weight count as outside the support.
_SUPPORT_THRESHOLD = 1e-6


def _step_size(gram: jax.Array) -> jax.Array:
    """Return 1 / L, with L the largest eigenvalue of `gram` (the gradient's Lipschitz constant)."""
    largest = jnp.linalg.eigvalsh(0.5 * (gram + gram.T))[-1]
    return 1.0 / jnp.where(largest > 0, largest, 1.0)


def project_to_simplex(vector: jax.Array) -> jax.Array:
    """Return the Euclidean projection of `vector` onto the probability simplex (sort-based)."""
    size = vector.shape[0]
    descending = jnp.sort(vector)[::-1]
    excess = jnp.cumsum(descending) - 1.0
    ranks = jnp.arange(1, size + 1, dtype=vector.dtype)
    # The largest rank whose sorted entry stays positive after the shift sets the threshold.
    positive = descending - excess / ranks > 0
    count = jnp.maximum(jnp.sum(positive), 1)
    threshold = excess[count - 1] / count.astype(vector.dtype)
    return jnp.maximum(vector - threshold, 0.0)


def _accelerated_projected_gradient(gradient_fn, project, start, step_size):
    """Run FISTA with gradient-based restart for `_PROJECTED_STEPS` steps."""

    def step(_, carry):
        current, extrapolated, momentum = carry
        moved = project(extrapolated - step_size * gradient_fn(extrapolated))
        next_momentum = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * momentum * momentum))

        # Restart the momentum when it points against the projected gradient step.
        restart = jnp.dot(extrapolated - moved, moved - current) > 0
        next_momentum = jnp.where(restart, 1.0, next_momentum)
        blend = jnp.where(restart, 0.0, (momentum - 1.0) / next_momentum)
        next_extrapolated = moved + blend * (moved - current)
        return moved, next_extrapolated, next_momentum

    one = jnp.ones([], start.dtype)
    result, _, _ = jax.lax.fori_loop(0, _PROJECTED_STEPS, step, (start, start, one))
    return result


def _masked_system(gram: jax.Array, mask: jax.Array) -> jax.Array:
    """Return `gram` restricted to `mask`, with identity rows and columns outside it."""
    return gram * jnp.outer(mask, mask) + jnp.diag(1.0 - mask)


def min_norm_simplex(gram: jax.Array) -> jax.Array:
    """Return simplex weights `a` that minimize `a^T G a`, the minimum-norm point of the convex hull.

    K = 1 and K = 2 are solved in closed form. For K = 2 the minimizer of
    `||x h_1 + (1 - x) h_2||^2` is `x = (G22 - G12) / (G11 + G22 - 2 G12)`
    clipped to [0, 1], and 0.5 when the two gradients are equal.

    Args:
      gram: K x K Gram matrix, best normalized so that its largest diagonal entry is 1.

    Returns:
      A length-K vector on the probability simplex.
    """
    num_tasks = gram.shape[0]
    dtype = gram.dtype
    if num_tasks == 1:
        return jnp.ones((1,), dtype)
    gram = 0.5 * (gram + gram.T)
    if num_tasks == 2:
        spread = gram[0, 0] + gram[1, 1] - 2.0 * gram[0, 1]
        safe_spread = jnp.where(spread > 0, spread, 1.0)
        first = jnp.where(spread > 0, jnp.clip((gram[1, 1] - gram[0, 1]) / safe_spread, 0.0, 1.0), 0.5)
        return jnp.stack([first, 1.0 - first])

    start = jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
    approximate = _accelerated_projected_gradient(lambda a: gram @ a, project_to_simplex, start, _step_size(gram))

    # On the support S the optimum solves G_SS a_S = t 1 with sum(a_S) = 1:
    # solve the bordered system [[G_SS, 1], [1^T, 0]] [a_S; -t] = [0; 1].
    mask = (approximate > _SUPPORT_THRESHOLD * jnp.max(approximate)).astype(dtype)
    bordered = jnp.zeros((num_tasks + 1, num_tasks + 1), dtype)
    bordered = bordered.at[:num_tasks, :num_tasks].set(_masked_system(gram, mask))
    bordered = bordered.at[:num_tasks, num_tasks].set(mask)
    bordered = bordered.at[num_tasks, :num_tasks].set(mask)
    right = jnp.zeros((num_tasks + 1,), dtype).at[num_tasks].set(1.0)
    exact = jnp.linalg.solve(bordered, right)[:num_tasks] * mask

    feasible = jnp.all(jnp.isfinite(exact)) & jnp.all(exact >= -1e-6)
    exact = jnp.maximum(jnp.where(feasible, exact, approximate), 0.0)
    exact = exact / jnp.sum(exact)
    better = feasible & (exact @ gram @ exact <= approximate @ gram @ approximate)
    return jnp.where(better, exact, approximate)


def nonnegative_qp(gram: jax.Array, linear: jax.Array) -> jax.Array:
    """Return `x >= 0` that minimizes `0.5 x^T G x + linear^T x`.

    For `linear = G w` the solution `x` gives the projection
    `sum_i (w_i + x_i) g_i` of `sum_i w_i g_i` onto the dual cone of the
    gradients. When `G` is singular the minimizer need not be unique, but the
    projection is.

    Args:
      gram: K x K positive semi-definite matrix, best normalized so that its
        largest diagonal entry is 1.
      linear: the length-K linear term.

    Returns:
      A non-negative length-K vector.
    """
    num_tasks = gram.shape[0]
    dtype = gram.dtype
    gram = 0.5 * (gram + gram.T)

    def objective(x):
        return 0.5 * x @ gram @ x + linear @ x

    start = jnp.zeros((num_tasks,), dtype)
    approximate = _accelerated_projected_gradient(
        lambda x: gram @ x + linear, lambda x: jnp.maximum(x, 0.0), start, _step_size(gram)
    )

    # On the support S the optimum solves G_SS x_S = -linear_S.
    mask = (approximate > _SUPPORT_THRESHOLD * jnp.max(approximate)).astype(dtype)
    exact = jnp.linalg.solve(_masked_system(gram, mask), -linear * mask) * mask
    feasible = jnp.all(jnp.isfinite(exact)) & jnp.all(exact >= 0.0)
    exact = jnp.where(feasible, exact, approximate)
    better = feasible & (objective(exact) <= objective(approximate))
    return jnp.where(better, exact, approximate)
