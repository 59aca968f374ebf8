"""PCGrad: projecting conflicting gradients."""

import jax
import jax.numpy as jnp
import optax

from came_grad import _aggregation

# Squared norms at or below this (the Gram matrix has a largest diagonal
# entry of 1) count as zero gradients, which nothing is projected onto.
_TINY_SQUARED = 1e-24


def random_task_orders(key: jax.Array, num_tasks: int) -> jax.Array:
    """Return a K x K matrix whose row i is an independent random permutation of the tasks."""
    keys = jax.random.split(key, num_tasks)
    return jax.vmap(lambda row_key: jax.random.permutation(row_key, num_tasks))(keys)


def pcgrad_coefficients(gram: jax.Array, orders: jax.Array) -> jax.Array:
    """Return the K coefficients of the PCGrad update for the task orders `orders`.

    Row i of the K x K matrix computed here contains the coefficients of the
    projected gradient `h_i^PC` in terms of `h_1..h_K`, so every inner product
    is read from the Gram matrix: `<h_i^PC, h_j> = row_i . G[:, j]`.
    Projecting out `h_j` subtracts `<h_i^PC, h_j> / G[j, j]` from entry j.

    Args:
      gram: K x K Gram matrix of the weighted task gradients.
      orders: K x K integer matrix; row i is the order in which task i is
        compared with the other tasks (its own index is skipped).

    Returns:
      The coefficients of `sum_i h_i^PC`.
    """
    num_tasks = gram.shape[0]
    diagonal = jnp.diagonal(gram)
    nonzero = diagonal > _TINY_SQUARED
    safe_diagonal = jnp.where(nonzero, diagonal, 1.0)
    eye = jnp.eye(num_tasks, dtype=gram.dtype)

    def project_task(task, order):
        def visit(row, other):
            product = row @ gram[:, other]
            conflict = (other != task) & nonzero[other] & (product < 0)
            row = row - jnp.where(conflict, product / safe_diagonal[other], 0.0) * eye[other]
            return row, None

        row, _ = jax.lax.scan(visit, eye[task], order)
        return row

    rows = jax.vmap(project_task)(jnp.arange(num_tasks), orders)
    return jnp.sum(rows, axis=0)


def pcgrad(task_weights=None, *, num_tasks: int | None = None, seed: int = 0) -> optax.GradientTransformation:
    """Aggregate stacked task gradients with PCGrad (gradient surgery).

    For each task i, in a random order over the other tasks j: when
    `<h_i^PC, h_j> < 0`, project `h_i^PC` onto the normal plane of `h_j`,
    `h_i^PC <- h_i^PC - <h_i^PC, h_j> / ||h_j||^2 h_j`. The update is
    `sum_i h_i^PC`. Each projection only changes coefficients on the `h_j`,
    so the update is a linear combination of the task gradients whose
    coefficients follow from the Gram matrix, and it scales with the
    gradients. Each task draws its own order from the PRNG key in the
    state, a new one every step. For K = 2 the order does not matter.

    Zero gradients are never projected onto. This transformation works on
    the full stacked gradients; the paper's sum over tasks is kept (divide
    by K, for example with `optax.scale`, for a mean).

    Args:
      task_weights: optional non-negative weights applied to the task
        gradients before aggregation. Default: all 1.
      num_tasks: K, when known; implied by `task_weights`.
      seed: seed of the PRNG key that draws the task orders.

    Returns:
      An `optax.GradientTransformation`.

    Example:
      >>> import jax.numpy as jnp, came_grad
      >>> tx = came_grad.pcgrad()
      >>> grads = jnp.array([[1.0, 0.0], [-1.0, 1.0]])
      >>> updates, _ = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> [round(u, 4) for u in updates.tolist()]
      [0.5, 1.5]

    References:
      Yu, Kumar, Gupta, Levine, Hausman and Finn, "Gradient Surgery for
      Multi-Task Learning", NeurIPS 2020. https://arxiv.org/abs/2001.06782
    """

    def update(gram, state, key, count):
        del count
        orders = random_task_orders(key, gram.shape[0])
        return pcgrad_coefficients(gram, orders), state

    weighting = _aggregation.Weighting(init=lambda num_tasks: (), update=update)
    return _aggregation.from_weighting(weighting, task_weights=task_weights, num_tasks=num_tasks, seed=seed)
