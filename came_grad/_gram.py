"""The two passes over the stacked task gradients: the Gram matrix and the combination.

Every method in this package reads the gradients only through these two
functions, so their speed and their handling of extreme values are shared.

How the Gram matrix is computed. Each leaf is viewed as a `[K, n]` matrix (a
free reshape) and its `K x K` Gram matrix is added to the total, so the
leaves are never concatenated. A float32 leaf with fewer than 131072
columns takes one `dot_general` (`gram_dot`). A longer leaf takes a
`fori_loop` over column chunks of about 128 KiB (`chunk_columns`: 16384
columns for K = 2, 8192 for K = 4, 4096 for K = 8), one small `dot_general`
per chunk and one for the last `n mod c` columns (`gram_chunked_dot`). So
does any leaf longer than two chunks that must be cast (bfloat16, float16)
or divided by the rescale factor first. The loop cuts and divides each
chunk inside its body, so XLA does not copy a float32 leaf.

NOTE: XLA:CPU (jaxlib 0.10.2) still converts a whole bfloat16 leaf to
float32 before the loop (its temporary memory grows by twice the leaf's
size), because it computes bfloat16 operations in float32. Backends with
native bfloat16 were not measured.

Why: `benchmarks/gram_formulations.py` timed each formulation against the
combination pass on the same `[K, n]` float32 leaf, on a 2-core AMD EPYC VM
with 24 GB and jaxlib 0.10.2, for K in {2, 4, 8}, in two runs. One
`dot_general`, which XLA:CPU hands to the YNNPACK library, took 1.7-2.7x
the combination at n = 1e5, 6.6-11.4x at n = 1e6 and 4.1-11.0x at
n = 1e7. The chunked loop took 1.5-2.6x, 3.9-5.1x and 0.6-1.8x. Slicing a
large leaf outside a loop copies it, because XLA:CPU does not fuse a slice
into a YNNPACK call. For K = 2 at n = 1e6, one `vdot` per pair of rows
(which copies every row), one `[4K, n / 4]` product and broadcast products
reduced in blocks of 64 columns were up to 20% faster than the loop, but
all three lost by 1.4-3.3x for K = 4 and 8. A product batched over
1024-column blocks was slower at n = 1e6. `benchmarks/README.md` has the
tables.
"""

import functools
import math

import jax
import jax.numpy as jnp

# Below this largest squared task-gradient norm, float32 products of the
# entries start to underflow (elements below about 1e-19 square to subnormals),
# so the Gram matrix is recomputed from gradients divided by their largest entry.
_UNDERFLOW_GRAM = 1e-20

# Elements of one chunk of the chunked formulation (128 KiB of float32). This
# size was the fastest or within noise of it for K in {2, 4, 8} in
# `benchmarks/gram_formulations.py`.
_CHUNK_ELEMENTS = 32768

# Float32 leaves with fewer columns take one `dot_general`. In two runs of
# `benchmarks/gram_formulations.py` it took 1.7-2.7x the combination at
# n = 1e5, within noise of the chunked loop (1.5-2.6x), and 6.6-11.4x at
# n = 1e6, where the loop took 3.9-5.1x.
_DOT_MAX_COLUMNS = 131072

# Up to this many tasks, `combine` writes the weighted sum out row by row.
_MAX_UNROLLED_TASKS = 16


def _accumulation_dtype(dtype) -> jnp.dtype:
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def _prepare(block: jax.Array, scale: jax.Array | None) -> jax.Array:
    """Cast one block to the accumulation dtype and divide it by `scale` when given."""
    block = block.astype(_accumulation_dtype(block.dtype))
    if scale is not None:
        block = block / scale.astype(block.dtype)
    return block


def _dot_gram(rows: jax.Array) -> jax.Array:
    return jax.lax.dot_general(
        rows,
        rows,
        dimension_numbers=(((1,), (1,)), ((), ())),
        precision=jax.lax.Precision.HIGHEST,
    )


def gram_dot(rows: jax.Array, scale: jax.Array | None = None) -> jax.Array:
    """Compute the Gram matrix of the rows of a `[K, n]` matrix with one matrix product."""
    return _dot_gram(_prepare(rows, scale))


def gram_chunked_dot(rows: jax.Array, chunk: int, scale: jax.Array | None = None, loops: int = 1) -> jax.Array:
    """Compute the Gram matrix of a `[K, n]` matrix chunk by chunk, one matrix product per chunk.

    Args:
      rows: the `[K, n]` matrix.
      chunk: columns per chunk.
      scale: optional divisor applied to each chunk as it is read.
      loops: number of independent loops that share the chunks. XLA:CPU
        ran two loops no faster than one in `benchmarks/gram_formulations.py`.

    Returns:
      The K x K Gram matrix in the accumulation dtype.
    """
    num_tasks, size = rows.shape
    full_chunks = size // chunk
    if full_chunks == 0:
        return gram_dot(rows, scale)
    dtype = _accumulation_dtype(rows.dtype)

    def body(index, total):
        block = jax.lax.dynamic_slice_in_dim(rows, index * chunk, chunk, axis=1)
        return total + _dot_gram(_prepare(block, scale))

    total = jnp.zeros((num_tasks, num_tasks), dtype)
    bounds = [full_chunks * part // loops for part in range(loops + 1)]
    for lower, upper in zip(bounds[:-1], bounds[1:]):
        total = total + jax.lax.fori_loop(lower, upper, body, jnp.zeros((num_tasks, num_tasks), dtype))

    # The tail is shorter than one chunk, so slicing it copies little.
    if size > full_chunks * chunk:
        total = total + _dot_gram(_prepare(rows[:, full_chunks * chunk :], scale))
    return total


def chunk_columns(num_tasks: int) -> int:
    """Return the chunk width, in columns, that keeps a float32 chunk near 128 KiB."""
    return max(1024, _CHUNK_ELEMENTS // max(num_tasks, 1))


def _choose_formulation(num_tasks: int, size: int, converts: bool = False):
    """Return the formulation for a `[num_tasks, size]` leaf as a function of `(rows, scale)`.

    Args:
      num_tasks: K.
      size: columns of the leaf.
      converts: whether each block is cast or divided before its product.
        One `dot_general` would then work on a converted copy of the whole
        leaf, so any leaf longer than two chunks takes the chunked loop.
    """
    chunk = chunk_columns(num_tasks)
    if size < 2 * chunk or (size < _DOT_MAX_COLUMNS and not converts):
        return gram_dot
    return functools.partial(gram_chunked_dot, chunk=chunk)


def _leaf_gram(leaf: jax.Array, scale: jax.Array | None = None) -> jax.Array:
    """Return the K x K Gram matrix of one leaf's rows, accumulated in float32."""
    size = math.prod(leaf.shape[1:])
    rows = leaf.reshape(leaf.shape[0], size)
    converts = scale is not None or rows.dtype != _accumulation_dtype(rows.dtype)
    return _choose_formulation(rows.shape[0], size, converts)(rows, scale=scale)


def _raw_gram(task_grads, scale: jax.Array | None = None) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(task_grads)
    gram = _leaf_gram(leaves[0], scale)
    for leaf in leaves[1:]:
        gram = gram + _leaf_gram(leaf, scale)
    return gram


def _max_abs(task_grads) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(task_grads)
    return jnp.max(jnp.stack([jnp.max(jnp.abs(leaf), initial=0).astype(jnp.float32) for leaf in leaves]))


def scaled_gram_matrix(task_grads) -> tuple[jax.Array, jax.Array]:
    """Compute the Gram matrix of the task gradients as `(gram, scale)`.

    The true Gram matrix is `scale**2 * gram`. For gradients whose float32
    Gram matrix is finite and not close to underflow, `scale` is 1 and only
    one pass over the data is made. Otherwise a second pass divides each
    block by the largest absolute entry as it is read, so no rescaled copy of
    the gradients is made. That covers gradients from about 1e-19 down to
    1e-30 and gradients large enough that squared norms overflow, up to 1e30
    and beyond. Non-finite gradients give a non-finite Gram matrix.

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
        return _raw_gram(task_grads, safe), safe

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

    Up to 16 tasks the sum is written out row by row, which XLA:CPU fused
    into one loop that ran faster than `tensordot` in
    `benchmarks/gram_formulations.py`. Low-precision leaves are summed in
    float32 and rounded once.

    Args:
      coefficients: vector of K weights.
      task_grads: pytree whose leaves have a leading task axis of size K.

    Returns:
      A pytree shaped like one task's gradient, with the leaves' dtypes.
    """

    return jax.tree_util.tree_map(lambda leaf: _combine_leaf(coefficients, leaf), task_grads)


# Jitted so that eager calls run the same fused code, and round the same
# way, as calls inside a larger jitted function.
@jax.jit
def _combine_leaf(coefficients: jax.Array, leaf: jax.Array) -> jax.Array:
    dtype = _accumulation_dtype(leaf.dtype)
    weights = coefficients.astype(dtype)
    if leaf.shape[0] > _MAX_UNROLLED_TASKS:
        return jnp.tensordot(weights, leaf.astype(dtype), axes=1).astype(leaf.dtype)

    # One elementwise expression over the K rows, which XLA fuses into a
    # single loop that casts each row as it reads it.
    total = weights[0] * leaf[0].astype(dtype)
    for index in range(1, leaf.shape[0]):
        total = total + weights[index] * leaf[index].astype(dtype)
    return total.astype(leaf.dtype)
