"""The two passes over the stacked task gradients: the Gram matrix and the combination.

Every method in this package reads the gradients only through these two
functions, so their speed and their handling of extreme values are shared.
"""

import jax
import jax.numpy as jnp

# Below this largest squared task-gradient norm, float32 products of the
# entries start to underflow (elements below about 1e-19 square to subnormals),
# so the Gram matrix is recomputed from gradients divided by their largest entry.
_UNDERFLOW_GRAM = 1e-20


def _leaf_gram(leaf: jax.Array) -> jax.Array:
    """Return the K x K Gram matrix of one leaf's rows, accumulated in float32."""
    rows = leaf.reshape(leaf.shape[0], -1)
    if rows.dtype != jnp.float64:
        rows = rows.astype(jnp.float32)
    return jax.lax.dot_general(
        rows,
        rows,
        dimension_numbers=(((1,), (1,)), ((), ())),
        precision=jax.lax.Precision.HIGHEST,
    )


def _raw_gram(task_grads) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(task_grads)
    gram = _leaf_gram(leaves[0])
    for leaf in leaves[1:]:
        gram = gram + _leaf_gram(leaf)
    return gram


def _max_abs(task_grads) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(task_grads)
    return jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)).astype(jnp.float32) for leaf in leaves]))


def scaled_gram_matrix(task_grads) -> tuple[jax.Array, jax.Array]:
    """Compute the Gram matrix of the task gradients as `(gram, scale)`.

    The true Gram matrix is `scale**2 * gram`. For gradients whose float32
    Gram matrix is finite and not close to underflow, `scale` is 1 and only
    one pass over the data is made. Otherwise (gradients from about 1e-19 down
    to 1e-30, or large enough that squared norms overflow, up to 1e30 and
    beyond) a second pass divides by the largest absolute entry first. Non-finite
    gradients give a non-finite Gram matrix.

    Args:
      task_grads: pytree whose leaves have a leading task axis of size K.

    Returns:
      A float32 (float64 under x64 for float64 input) K x K matrix and a scalar.
    """
    gram = _raw_gram(task_grads)
    largest = jnp.max(jnp.diagonal(gram))
    needs_rescale = jnp.logical_or(~jnp.all(jnp.isfinite(gram)), largest < _UNDERFLOW_GRAM)

    def rescaled(_):
        scale = _max_abs(task_grads).astype(gram.dtype)
        safe = jnp.where(scale > 0, scale, jnp.ones_like(scale))
        divided = jax.tree_util.tree_map(lambda leaf: leaf.astype(gram.dtype) / safe, task_grads)
        return _raw_gram(divided), safe

    def unchanged(_):
        return gram, jnp.ones([], gram.dtype)

    return jax.lax.cond(needs_rescale, rescaled, unchanged, None)


def gram_matrix(task_grads) -> jax.Array:
    """Compute the K x K Gram matrix `G[i, j] = <g_i, g_j>` of stacked task gradients.

    Inner products sum over every leaf; the leaves are never concatenated.
    Low-precision gradients (bfloat16, float16) are accumulated in float32.

    Args:
      task_grads: pytree whose leaves have a leading task axis of size K.

    Returns:
      The Gram matrix, a float32 array of shape [K, K] (float64 for float64 input).
    """
    gram, scale = scaled_gram_matrix(task_grads)
    return gram * scale**2


def combine(coefficients: jax.Array, task_grads):
    """Compute `sum_i coefficients[i] * g_i` leaf by leaf, in one pass over the task axis.

    Args:
      coefficients: vector of K weights.
      task_grads: pytree whose leaves have a leading task axis of size K.

    Returns:
      A pytree shaped like one task's gradient, with the leaves' dtypes.
    """

    def combine_leaf(leaf):
        if leaf.dtype in (jnp.bfloat16, jnp.float16):
            combined = jnp.tensordot(coefficients.astype(jnp.float32), leaf.astype(jnp.float32), axes=1)
        else:
            combined = jnp.tensordot(coefficients.astype(leaf.dtype), leaf, axes=1)
        return combined.astype(leaf.dtype)

    return jax.tree_util.tree_map(combine_leaf, task_grads)
