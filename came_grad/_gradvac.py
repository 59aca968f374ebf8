"""GradVac: gradient vaccine, aligning task gradients towards EMA targets of their cosine similarity."""

import jax
import jax.numpy as jnp
import optax

from came_grad import _aggregation
from came_grad import _pcgrad
from came_grad import _validation

# Squared norms at or below this (the Gram matrix has a largest diagonal
# entry of 1) count as zero gradients, which are neither moved nor aligned to.
_TINY_SQUARED = 1e-24

# Targets are kept below 1 so that sqrt(1 - target^2) stays positive.
_MAX_TARGET = 1.0 - 1e-6


def gradvac_coefficients(gram, targets, orders, beta):
    """Return `(coefficients, new_targets)` of one GradVac step.

    Row i of the K x K matrix computed here contains the coefficients of the altered
    gradient `h_i'` in terms of `h_1..h_K`. For each other task j in task i's
    order, with `phi = cos(h_i', h_j)` and target `T = targets[i, j]`: when
    `phi < T`, add `||h_i'|| (T sqrt(1 - phi^2) - phi sqrt(1 - T^2)) /
    (||h_j|| sqrt(1 - T^2))` times `h_j`, which makes the cosine exactly `T`.
    Then `targets[i, j] <- (1 - beta) T + beta phi`, with `phi` measured
    before the change.

    Args:
      gram: K x K Gram matrix of the weighted task gradients.
      targets: K x K matrix of target cosines.
      orders: K x K integer matrix; row i is the order in which task i is
        compared with the other tasks (its own index is skipped).
      beta: EMA rate of the targets.

    Returns:
      The coefficients of `sum_i h_i'` and the updated targets.
    """
    num_tasks = gram.shape[0]
    dtype = gram.dtype
    diagonal = jnp.diagonal(gram)
    nonzero = diagonal > _TINY_SQUARED
    norms = jnp.sqrt(jnp.where(nonzero, diagonal, 1.0))
    eye = jnp.eye(num_tasks, dtype=dtype)
    targets = targets.astype(dtype)

    def align_task(task, order, target_row):
        def visit(carry, other):
            row, target_row = carry
            row_norm = jnp.sqrt(jnp.maximum(row @ gram @ row, 0.0))
            active = (other != task) & nonzero[other] & (row_norm ** 2 > _TINY_SQUARED)
            safe_row_norm = jnp.where(active, row_norm, 1.0)
            cosine = jnp.clip((row @ gram[:, other]) / (safe_row_norm * norms[other]), -1.0, 1.0)

            target = jnp.minimum(target_row[other], _MAX_TARGET)
            target_sine = jnp.sqrt(1.0 - target * target)
            sine = jnp.sqrt(jnp.maximum(1.0 - cosine * cosine, 0.0))
            step = row_norm * (target * sine - cosine * target_sine) / (norms[other] * target_sine)
            row = row + jnp.where(active & (cosine < target), step, 0.0) * eye[other]

            updated = (1.0 - beta) * target_row[other] + beta * cosine
            target_row = target_row.at[other].set(jnp.where(active, updated, target_row[other]))
            return (row, target_row), None

        (row, target_row), _ = jax.lax.scan(visit, (eye[task], target_row), order)
        return row, target_row

    rows, new_targets = jax.vmap(align_task)(jnp.arange(num_tasks), orders, targets)
    return jnp.sum(rows, axis=0), new_targets


def gradvac(
    beta: _validation.ScalarOrSchedule = 0.01,
    task_weights=None,
    *,
    num_tasks: int | None = None,
    seed: int = 0,
) -> optax.GradientTransformation:
    """Aggregate stacked task gradients with GradVac (gradient vaccine).

    GradVac keeps, for every ordered pair of tasks, an exponential moving
    average of their cosine similarity as a target. For each task i, in a
    random order over the other tasks j, when `cos(h_i', h_j)` is below the
    target, `h_i'` gains the multiple of `h_j` that raises the cosine to
    exactly the target. The update is `sum_i h_i'`, a linear combination of
    the task gradients whose coefficients follow from the Gram matrix, so it
    scales with the gradients. Targets start at 0 (PCGrad's threshold).

    The targets are kept per pair of tasks for the whole gradient; for
    per-layer targets, build one transformation per parameter group (for
    example with `optax.multi_transform`). Zero gradients are skipped rather
    than divided by a small constant. Targets are updated with the cosine
    measured before each alignment.

    Args:
      beta: EMA rate of the targets in [0, 1]; float or schedule. Schedule
        values outside the range are clipped into it at run time.
      task_weights: optional non-negative weights applied to the task
        gradients before aggregation. Default: all 1.
      num_tasks: K. Required, because the state contains a K x K matrix of
        targets; implied by `task_weights`.
      seed: seed of the PRNG key that draws the task orders.

    Returns:
      An `optax.GradientTransformation`.

    Raises:
      ValueError: if `beta` is out of range, or neither `num_tasks` nor
        `task_weights` is given.

    Example:
      >>> import jax.numpy as jnp, came_grad
      >>> tx = came_grad.gradvac(num_tasks=2)
      >>> grads = jnp.array([[1.0, 0.0], [-1.0, 1.0]])
      >>> updates, _ = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> [round(u, 4) for u in updates.tolist()]
      [0.5, 1.5]

    References:
      Wang, Tsvetkov, Firat and Cao, "Gradient Vaccine: Investigating and
      Improving Multi-task Optimization in Massively Multilingual Models",
      ICLR 2021. https://arxiv.org/abs/2010.05874
    """
    _validation.check_scalar("beta", beta, lower=0.0, upper=1.0)

    def init(known_tasks):
        if known_tasks is None:
            raise ValueError(
                "gradvac keeps a K x K matrix of target cosines in its state, so K must be known when "
                "the transformation is built; pass num_tasks=K or task_weights."
            )
        return jnp.zeros((known_tasks, known_tasks), jnp.float32)

    def update(gram, targets, key, count):
        beta_now = jnp.clip(_aggregation.evaluate(beta, count), 0.0, 1.0).astype(gram.dtype)
        orders = _pcgrad.random_task_orders(key, gram.shape[0])
        coefficients, new_targets = gradvac_coefficients(gram, targets, orders, beta_now)
        return coefficients, new_targets.astype(targets.dtype)

    weighting = _aggregation.Weighting(init=init, update=update)
    return _aggregation.from_weighting(weighting, task_weights=task_weights, num_tasks=num_tasks, seed=seed)
