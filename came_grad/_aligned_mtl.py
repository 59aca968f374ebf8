"""Aligned-MTL: aligning the principal components of the task gradients."""

import jax
import jax.numpy as jnp
import optax

from came_grad import _aggregation

# Eigenvalues of the Gram matrix at or below this fraction of the largest
# count as zero. float32 eigenvalues carry absolute errors of about
# K * 1e-7 times the largest one, so smaller values are rounding noise.
_RANK_TOLERANCE = 1e-5


def aligned_mtl_coefficients(gram: jax.Array) -> jax.Array:
    """Return `B 1` with `B = sqrt(lambda_min) V diag(lambda)^(-1/2) V^T` over the nonzero eigenvalues of G.

    With `G = V diag(lambda) V^T`, the aligned gradients `H B` (columns
    `h_i`) have singular values all equal to `sqrt(lambda_min)`, the smallest
    nonzero one of `H`, so no principal direction dominates.
    """
    eigenvalues, eigenvectors = jnp.linalg.eigh(0.5 * (gram + gram.T))
    largest = jnp.max(eigenvalues)
    kept = eigenvalues > _RANK_TOLERANCE * jnp.maximum(largest, 0.0)
    kept = kept & (largest > 0)
    smallest = jnp.min(jnp.where(kept, eigenvalues, jnp.inf))
    safe_eigenvalues = jnp.where(kept, eigenvalues, 1.0)
    factors = jnp.where(kept, jnp.sqrt(smallest / safe_eigenvalues), 0.0)
    balance = (eigenvectors * factors) @ eigenvectors.T
    return balance @ jnp.ones((gram.shape[0],), gram.dtype)


def aligned_mtl(task_weights=None, *, num_tasks: int | None = None) -> optax.GradientTransformation:
    """Aggregate stacked task gradients with Aligned-MTL.

    With the Gram matrix `G = V diag(lambda) V^T`, the update is
    `H B 1` for `B = sqrt(lambda_min) V diag(lambda)^(-1/2) V^T`: the task
    gradients are rotated and rescaled so that their matrix has equal
    singular values (the smallest nonzero one of the original), and the
    aligned gradients are summed. Orthogonal gradients of different norms
    are all shrunk to the smallest norm. Eigenvalues below `1e-5` of the
    largest are treated as zero, so rank-deficient stacks use the nonzero
    part of the spectrum. The update scales with the gradients.

    The task preferences of the paper are uniform (all 1); pass
    `task_weights` to weight the gradients before the alignment.

    Args:
      task_weights: optional non-negative weights applied to the task
        gradients before aggregation. Default: all 1.
      num_tasks: K, when known; implied by `task_weights`.

    Returns:
      An `optax.GradientTransformation`.

    Example:
      >>> import jax.numpy as jnp, came_grad
      >>> tx = came_grad.aligned_mtl()
      >>> grads = jnp.array([[1.0, 0.0], [0.0, 2.0]])
      >>> updates, _ = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> [round(u, 4) for u in updates.tolist()]
      [1.0, 1.0]

    References:
      Senushkin, Patakin, Kuznetsov and Konushin, "Independent Component
      Alignment for Multi-Task Learning", CVPR 2023.
      https://arxiv.org/abs/2305.19000
    """

    weighting = _aggregation.stateless_weighting(lambda gram, count: aligned_mtl_coefficients(gram))
    return _aggregation.from_weighting(weighting, task_weights=task_weights, num_tasks=num_tasks)
