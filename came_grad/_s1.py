"""The conflict-averse dual problem shared by CAGrad and CAME-Grad.

For task gradients `h_1..h_K` with Gram matrix `G`, mean `mu = sum_i h_i / K`
and radius `r >= 0`, the direction inside the ball `||u - mu|| <= r` that
maximizes `min_i <h_i, u>` is `u = mu + r * h_a / ||h_a||`, where
`h_a = sum_i a_i h_i` and `a` minimizes, over the probability simplex,

    f(a) = a^T b + r * sqrt(a^T G a),    b = G m,   m = (1/K, ..., 1/K).

Everything here works on K x K matrices only and runs under `jit`: a closed
form for K = 2, and for K > 2 a log-barrier interior-point method with a fixed
number of Newton steps, followed by exact solves on every prefix of the tasks
sorted by barrier weight and a few active-set rounds (see `_polish`).

Measured accuracy (float32, 400 seeded random, ill-conditioned and
rank-deficient problems with K in 3..32, against CLARABEL in float64 on the
same rounded Gram matrix): with `scale = max_i |b_i| + r * sqrt(max_i G_ii)`,
the objective error is below 1e-7 * scale when |f*| >= 1e-3 * scale.
NOTE: when f* is near zero (an optimum with ||h_a|| close to 0), errors up to
2.6e-4 * scale were measured, because float32 resolves a^T G a only to about
1e-7. One call takes about 0.2 ms (K = 3), 0.5 ms (K = 8) and 2 ms (K = 32)
jitted on a shared 2-core AMD EPYC CPU.

References:
  Liu, Liu, Jin, Stone and Liu, "Conflict-Averse Gradient Descent for
  Multi-task Learning", NeurIPS 2021. https://arxiv.org/abs/2110.14048
"""

import jax
import jax.numpy as jnp

from came_grad import _validation

# Interior-point schedule: the barrier weight t grows from 1 by this factor per
# Newton step up to _MAX_BARRIER, then a few more steps re-center. With the
# Gram matrix normalized to a largest diagonal entry of 1, the duality gap K / t
# at the end is below 1e-8 for K <= 32.
_NEWTON_STEPS = 64
_BARRIER_GROWTH = 1.6
_MAX_BARRIER = 1e10
_LINE_SEARCH_STEPS = 12
_ACTIVE_SET_ROUNDS = 4
# Relative objective margin (about 16 float32 ulps) by which the barrier point
# must beat the exact support solution to be returned instead.
_EXACT_PREFERENCE = 1e-6


def dual_objective(weights: jax.Array, gram: jax.Array, radius: jax.Array) -> jax.Array:
    """Evaluate `f(a) = a^T G m + r * sqrt(a^T G a)` for the simplex point `a`."""
    num_tasks = gram.shape[0]
    mean_products = gram @ jnp.full((num_tasks,), 1.0 / num_tasks, gram.dtype)
    quadratic = jnp.maximum(weights @ gram @ weights, 0.0)
    return weights @ mean_products + radius * jnp.sqrt(quadratic)


def _solve_two_tasks(gram: jax.Array, radius: jax.Array) -> jax.Array:
    """Minimize the dual over the segment a = (x, 1 - x) in closed form."""
    g11, g22, g12 = gram[0, 0], gram[1, 1], gram[0, 1]
    b1 = 0.5 * (g11 + g12)
    b2 = 0.5 * (g12 + g22)

    # With y = D x + E, the squared norm of h_a is y^2 / D + M, where
    # D = ||h_1 - h_2||^2 and M = det(G) / D is its minimum over the line.
    spread = jnp.maximum(g11 + g22 - 2.0 * g12, 0.0)
    offset = g12 - g22
    determinant = jnp.maximum(g11 * g22 - g12 * g12, 0.0)
    safe_spread = jnp.where(spread > 0, spread, 1.0)
    floor = determinant / safe_spread

    # Stationarity: y / sqrt(y^2 / D + M) = beta with beta = (b2 - b1) / r.
    safe_radius = jnp.where(radius > 0, radius, 1.0)
    beta = (b2 - b1) / safe_radius
    ratio = beta * beta / safe_spread
    interior = ratio < 1.0
    y = jnp.sign(beta) * jnp.sqrt(jnp.where(interior, beta * beta * floor / jnp.maximum(1.0 - ratio, 1e-30), 0.0))
    x_interior = (y - offset) / safe_spread
    x_boundary = jnp.where(beta > 0, 1.0, 0.0)
    x = jnp.clip(jnp.where(interior, x_interior, x_boundary), 0.0, 1.0)

    # Without a ball (r = 0) the objective is linear and its minimum is a vertex;
    # identical gradients (D = 0) make every point optimal.
    x_linear = jnp.where(b1 < b2, 1.0, jnp.where(b1 > b2, 0.0, 0.5))
    x = jnp.where(radius > 0, x, x_linear)
    x = jnp.where(spread > 0, x, 0.5)
    return jnp.stack([x, 1.0 - x])


def _barrier_value(weights, gram, mean_products, radius, barrier):
    quadratic = jnp.maximum(weights @ gram @ weights, 1e-30)
    objective = weights @ mean_products + radius * jnp.sqrt(quadratic)
    # Divided by the barrier weight so that float32 still resolves changes of
    # the objective when the weight is large.
    return objective - jnp.sum(jnp.log(weights)) / barrier


def _barrier_slope(weights, direction, gram, mean_products, radius, barrier):
    """Return the derivative of the (barrier-divided) barrier function along `direction`."""
    projected = gram @ weights
    norm = jnp.sqrt(jnp.maximum(weights @ projected, 1e-30))
    gradient = mean_products + radius * projected / norm - 1.0 / (barrier * weights)
    return gradient @ direction


def _interior_point(gram: jax.Array, radius: jax.Array) -> jax.Array:
    """Follow the log-barrier central path with a fixed budget of Newton steps."""
    num_tasks = gram.shape[0]
    dtype = gram.dtype
    mean_products = gram @ jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
    ones = jnp.ones((num_tasks,), dtype)
    eye = jnp.eye(num_tasks, dtype=dtype)
    fractions = 0.5 ** jnp.arange(_LINE_SEARCH_STEPS, dtype=dtype)

    def newton_step(step, weights):
        barrier = jnp.minimum(_BARRIER_GROWTH ** step.astype(dtype), _MAX_BARRIER)
        projected = gram @ weights
        quadratic = jnp.maximum(weights @ projected, 1e-30)
        norm = jnp.sqrt(quadratic)

        gradient = barrier * (mean_products + radius * projected / norm) - 1.0 / weights
        curvature = radius * (gram / norm - jnp.outer(projected, projected) / (norm * quadratic))
        hessian = barrier * curvature + jnp.diag(1.0 / (weights * weights))
        hessian = 0.5 * (hessian + hessian.T) + 1e-12 * jnp.trace(hessian) / num_tasks * eye

        # Newton direction on the hyperplane sum(a) = 1, by eliminating its multiplier.
        solved = jnp.linalg.solve(hessian, jnp.stack([gradient, ones], axis=1))
        from_gradient, from_ones = solved[:, 0], solved[:, 1]
        multiplier = -(ones @ from_gradient) / (ones @ from_ones)
        direction = -(from_gradient + multiplier * from_ones)
        # The two solves nearly cancel when some weights are tiny, so restore
        # sum(direction) = 0 explicitly rather than trust float32 rounding.
        direction = direction - jnp.mean(direction)
        direction = jnp.where(jnp.all(jnp.isfinite(direction)), direction, 0.0)

        # Stay strictly inside the simplex, then take the best of a few shorter steps.
        shrinking = direction < 0
        limits = jnp.where(shrinking, -weights / jnp.where(shrinking, direction, -1.0), jnp.inf)
        longest = jnp.minimum(1.0, 0.99 * jnp.min(limits))
        # The barrier function is convex along the ray, so the largest trial step
        # whose directional derivative is still non-positive is the best of them.
        # Derivatives keep their float32 accuracy where differences of values do not.
        steps = longest * fractions
        candidates = jnp.maximum(weights[None, :] + steps[:, None] * direction[None, :], 1e-30)
        slopes = jax.vmap(lambda c: _barrier_slope(c, direction, gram, mean_products, radius, barrier))(candidates)
        descending = slopes <= 0
        first = jnp.argmax(descending)
        moved = jnp.where(jnp.any(descending), candidates[first], weights)
        return moved / jnp.sum(moved)

    start = jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
    return jax.lax.fori_loop(0, _NEWTON_STEPS, newton_step, start)


def _support_candidates(gram: jax.Array, radius: jax.Array, support: jax.Array) -> jax.Array:
    """Return two simplex points built from the stationarity conditions on `support`.

    The first point is the stationary point of `f` on the affine hull of the
    tasks in `support` (set S). There the optimum equalizes
    `b_i + r (G a)_i / ||h_a||`. With `p = G_SS^-1 1`, `q = G_SS^-1 b_S`,
    `P = 1^T p`, `Q = 1^T q` and `B = b_S^T q`, it is
    `a_S = (lam p - q) / t` with `t = sqrt(Q^2 - P (B - r^2))` and
    `lam = (Q + t) / P`, and `lam` is then the objective value.

    The second point is the minimum-norm point `p / P` of the same affine hull.
    It is the optimum when zero lies in the convex hull of the support, where
    `||h_a|| = 0` and the first formula has no real root.

    Negative entries are clipped and the result renormalized, so every finite
    row is a feasible point and the caller only compares objective values.
    Rows are NaN where the system is singular or has no real root.

    Returns:
      A 2 x K array of candidate weights.
    """
    num_tasks = gram.shape[0]
    dtype = gram.dtype
    mean_products = gram @ jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
    mask = support.astype(dtype)

    # Solve with the unit-diagonal (correlation) matrix: task norms that span
    # several decades would otherwise cost float32 most of its digits.
    diagonal = jnp.diagonal(gram)
    scales = jnp.where(diagonal > 0, jnp.sqrt(jnp.maximum(diagonal, 0.0)), 1.0)
    correlation = gram / jnp.outer(scales, scales)
    masked = correlation * jnp.outer(mask, mask) + jnp.diag(1.0 - mask)
    right = jnp.stack([mask, mean_products * mask], axis=1) / scales[:, None]
    solved = jnp.linalg.solve(masked, right) / scales[:, None]
    p, q = solved[:, 0] * mask, solved[:, 1] * mask
    total_p, total_q, cross = jnp.sum(p), jnp.sum(q), (mean_products * mask) @ q

    discriminant = total_q**2 - total_p * (cross - radius**2)
    root = jnp.sqrt(jnp.maximum(discriminant, 0.0))
    multiplier = (total_q + root) / total_p
    # Dividing by the sum rather than by `root` keeps sum(a) = 1 exact when
    # `lam p - q` loses digits to cancellation.
    stationary = multiplier * p - q
    stationary_ok = (total_p > 0) & (discriminant > 0)
    stationary = jnp.where(stationary_ok, stationary, jnp.nan)
    candidates = jnp.stack([stationary, p])

    candidates = jnp.maximum(candidates, 0.0)
    totals = jnp.sum(candidates, axis=1, keepdims=True)
    candidates = candidates / totals
    usable = (totals > 0) & jnp.all(jnp.isfinite(candidates), axis=1, keepdims=True)
    return jnp.where(usable, candidates, jnp.nan)


def _best_point(points: jax.Array, gram: jax.Array, radius: jax.Array) -> jax.Array:
    """Return the row of `points` with the lowest objective, skipping NaN rows."""
    values = jax.vmap(lambda point: dual_objective(point, gram, radius))(points)
    values = jnp.where(jnp.isfinite(values), values, jnp.inf)
    return points[jnp.argmin(values)]


def _polish(approximate: jax.Array, gram: jax.Array, radius: jax.Array) -> jax.Array:
    """Replace the interior-point estimate by an exact solution on a nearby support.

    The barrier keeps inactive weights small but positive, so the support is
    not known exactly. Every prefix of the tasks sorted by decreasing weight
    is tried as the support, then a few active-set rounds add the task whose
    gradient entry violates the optimality conditions most.
    """
    num_tasks = gram.shape[0]
    dtype = gram.dtype
    mean_products = gram @ jnp.full((num_tasks,), 1.0 / num_tasks, dtype)

    order = jnp.argsort(-approximate)
    ranks = jnp.zeros((num_tasks,), jnp.int32).at[order].set(jnp.arange(num_tasks, dtype=jnp.int32))
    prefixes = ranks[None, :] < jnp.arange(1, num_tasks + 1)[:, None]
    candidates = jax.vmap(lambda support: _support_candidates(gram, radius, support))(prefixes)
    exact = _best_point(candidates.reshape(-1, num_tasks), gram, radius)

    # Objective values tie to float32 rounding while the points can still differ
    # by about sqrt(eps) in directions where f is flat, so keep the exact
    # support solution unless the barrier point is clearly better. That keeps
    # the S1 direction accurate and not only the objective.
    scale = jnp.max(jnp.abs(mean_products)) + radius * jnp.sqrt(jnp.max(jnp.diagonal(gram)))
    margin = _EXACT_PREFERENCE * scale
    exact_value = dual_objective(exact, gram, radius)
    keep_exact = jnp.isfinite(exact_value) & (exact_value <= dual_objective(approximate, gram, radius) + margin)
    best = jnp.where(keep_exact, exact, approximate)

    def add_violator(_, weights):
        projected = gram @ weights
        norm = jnp.sqrt(jnp.maximum(weights @ projected, 0.0))
        safe_norm = jnp.where(norm > 0, norm, 1.0)
        gradient = mean_products + radius * projected / safe_norm
        support = weights > 0
        entering = jnp.argmin(jnp.where(support, jnp.inf, gradient))
        grown = support.at[entering].set(True)
        trial = _support_candidates(gram, radius, grown)
        return _best_point(jnp.concatenate([trial, weights[None, :]]), gram, radius)

    return jax.lax.fori_loop(0, _ACTIVE_SET_ROUNDS, add_violator, best)


def solve_dual(gram: jax.Array, radius: jax.Array) -> jax.Array:
    """Return the simplex weights `a` that minimize `a^T G m + r * sqrt(a^T G a)`.

    Args:
      gram: K x K Gram matrix, best normalized so that its largest diagonal
        entry is 1. The minimizer does not change when `gram` and `radius**2`
        are scaled together.
      radius: the ball radius `r >= 0` in the units of `sqrt(gram)`.

    Returns:
      A length-K vector on the probability simplex.
    """
    num_tasks = gram.shape[0]
    if num_tasks == 1:
        return jnp.ones((1,), gram.dtype)
    gram = 0.5 * (gram + gram.T)
    if num_tasks == 2:
        return _solve_two_tasks(gram, radius)

    approximate = _interior_point(gram, radius)
    weights = _polish(approximate, gram, radius)
    return weights / jnp.sum(weights)


def conflict_averse_coefficients(gram: jax.Array, radius_factor: jax.Array) -> jax.Array:
    """Return `c` with `sum_i c_i h_i = mu + rho ||mu|| h_a / ||h_a||` (the S1 direction).

    `radius_factor` is rho, the ball radius relative to `||mu||`. When `h_a`
    vanishes (zero lies in the convex hull of the gradients, a
    Pareto-stationary point) the direction is `mu` itself.

    Args:
      gram: K x K Gram matrix of the (weighted) task gradients, normalized so
        that its largest diagonal entry is 1 or all zero.
      radius_factor: rho >= 0.

    Returns:
      The K coefficients of the rectified direction.
    """
    num_tasks = gram.shape[0]
    dtype = gram.dtype
    mean = jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
    mean_norm = jnp.sqrt(jnp.maximum(mean @ gram @ mean, 0.0))
    radius = radius_factor * mean_norm

    weights = solve_dual(gram, radius)
    combined_norm = jnp.sqrt(jnp.maximum(weights @ gram @ weights, 0.0))
    stationary = combined_norm**2 <= _validation.vanishing_squared_norm(gram)
    safe_norm = jnp.where(stationary, 1.0, combined_norm)
    return jnp.where(stationary, mean, mean + radius * weights / safe_norm)

