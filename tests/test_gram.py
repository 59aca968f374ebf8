"""Exactness of the Gram-matrix formulations and of the combination pass.

Every formulation is checked against a float64 numpy Gram matrix of the
flattened gradients. The sizes include leaves shorter than one chunk, leaves
that are not a multiple of the chunk width and an empty leaf.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from came_grad import _gram

FORMULATIONS = {
    "dot": _gram.gram_dot,
    "chunked_1024": functools.partial(_gram.gram_chunked_dot, chunk=1024),
    "chunked_4096": functools.partial(_gram.gram_chunked_dot, chunk=4096),
    "chunked_4096_two_loops": functools.partial(_gram.gram_chunked_dot, chunk=4096, loops=2),
    "chunked_4096_three_loops": functools.partial(_gram.gram_chunked_dot, chunk=4096, loops=3),
}

# Leaf sizes around the chunk widths: shorter than a chunk, exact multiples,
# one more than a multiple, and far from any multiple.
ROW_SIZES = [0, 1, 1000, 1024, 4096, 4097, 2 * 4096 + 1, 50_001, 70_000]


def reference_gram(task_grads) -> np.ndarray:
    leaves = jax.tree_util.tree_leaves(task_grads)
    rows = np.concatenate([np.asarray(leaf, np.float64).reshape(leaf.shape[0], -1) for leaf in leaves], axis=1)
    return rows @ rows.T


def relative_error(actual, expected) -> float:
    expected = np.asarray(expected, np.float64)
    return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)) / max(np.max(np.abs(expected)), 1e-300))


def random_tree(rng, num_tasks, dtype=np.float32):
    """A network-like tree: matrices (one long enough for the chunked loop), odd vectors, a scalar, empty leaves."""
    shapes = [(130, 257), (64, 33), (4097,), (1000,), (), (0,), (3, 0, 2), (600, 251)]
    return {
        f"leaf_{index}": jnp.asarray(rng.standard_normal((num_tasks, *shape)).astype(dtype))
        for index, shape in enumerate(shapes)
    }


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("name", sorted(FORMULATIONS))
@pytest.mark.parametrize("num_tasks", [1, 2, 3, 5, 8])
def test_formulation_matches_float64(rng, name, num_tasks):
    formulation = jax.jit(FORMULATIONS[name])
    for size in ROW_SIZES:
        rows = jnp.asarray(rng.standard_normal((num_tasks, size)).astype(np.float32))

        gram = formulation(rows)

        assert gram.shape == (num_tasks, num_tasks)
        assert gram.dtype == jnp.float32
        assert relative_error(gram, reference_gram(rows)) < 1e-5, size


@pytest.mark.parametrize("name", sorted(FORMULATIONS))
def test_formulation_applies_scale(rng, name):
    rows = jnp.asarray(rng.standard_normal((3, 9000)).astype(np.float32))

    gram = jax.jit(FORMULATIONS[name])(rows, scale=jnp.float32(4.0))

    assert relative_error(gram, reference_gram(rows) / 16.0) < 1e-5


@pytest.mark.parametrize("num_tasks", [1, 2, 4, 8])
def test_gram_matrix_tree(rng, num_tasks):
    tree = random_tree(rng, num_tasks)

    gram = jax.jit(_gram.gram_matrix)(tree)

    assert gram.dtype == jnp.float32
    assert relative_error(gram, reference_gram(tree)) < 1e-5
    np.testing.assert_array_equal(np.asarray(gram), np.asarray(gram).T)


@pytest.mark.parametrize("num_tasks", [2, 4, 8])
def test_large_leaf_uses_chunks(rng, num_tasks):
    chunk = _gram.chunk_columns(num_tasks)
    size = max(3 * chunk, _gram._DOT_MAX_COLUMNS) + 17

    chosen = _gram._choose_formulation(num_tasks, size)
    small = _gram._choose_formulation(num_tasks, _gram._DOT_MAX_COLUMNS - 1)

    assert isinstance(chosen, functools.partial)
    assert chosen.func is _gram.gram_chunked_dot
    assert small is _gram.gram_dot
    rows = jnp.asarray(rng.standard_normal((num_tasks, size)).astype(np.float32))
    assert relative_error(jax.jit(chosen)(rows), reference_gram(rows)) < 1e-5


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e-10, 1e10, 1e20, 1e30])
def test_extreme_scales(rng, scale):
    tree = random_tree(rng, 3)
    tree["leaf_0"] = tree["leaf_0"] * 3.0
    scaled = jax.tree_util.tree_map(lambda leaf: leaf * np.float32(scale), tree)

    gram, factor = jax.jit(_gram.scaled_gram_matrix)(scaled)

    assert np.all(np.isfinite(np.asarray(gram)))
    true_gram = np.asarray(gram, np.float64) * float(factor) ** 2
    assert relative_error(true_gram, reference_gram(scaled)) < 1e-5


def test_extreme_scale_unchanged_for_moderate_values(rng):
    tree = random_tree(rng, 2)

    _, factor = jax.jit(_gram.scaled_gram_matrix)(tree)

    assert float(factor) == 1.0


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_accumulates_in_float32(rng, dtype):
    tree = jax.tree_util.tree_map(lambda leaf: leaf.astype(dtype), random_tree(rng, 4))

    gram = jax.jit(_gram.gram_matrix)(tree)

    assert gram.dtype == jnp.float32
    # The reference uses the same rounded low-precision values, so only the
    # float32 accumulation error remains.
    assert relative_error(gram, reference_gram(tree)) < 1e-5


def test_bfloat16_large_leaf_chunked(rng):
    assert _gram._choose_formulation(2, 300_007).func is _gram.gram_chunked_dot

    rows = jnp.asarray(rng.standard_normal((2, 300_007)).astype(np.float32)).astype(jnp.bfloat16)

    gram = jax.jit(_gram.gram_matrix)({"weights": rows})

    assert relative_error(gram, reference_gram(rows)) < 1e-5


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("leaf", ["leaf_0", "leaf_2", "leaf_4", "leaf_7"])
def test_non_finite_propagates(rng, bad_value, leaf):
    tree = random_tree(rng, 3)
    tree[leaf] = tree[leaf].at[1].set(bad_value)

    gram = jax.jit(_gram.gram_matrix)(tree)
    raw, factor = jax.jit(_gram.scaled_gram_matrix)(tree)

    assert not np.all(np.isfinite(np.asarray(gram)))
    # Either the scaled matrix or the scale itself carries the non-finite value.
    scaled_is_finite = np.all(np.isfinite(np.asarray(raw))) and np.isfinite(float(factor))
    assert not scaled_is_finite


def test_all_zero_gradients(rng):
    tree = jax.tree_util.tree_map(jnp.zeros_like, random_tree(rng, 3))

    gram = jax.jit(_gram.gram_matrix)(tree)

    np.testing.assert_array_equal(np.asarray(gram), np.zeros((3, 3)))


@pytest.mark.parametrize("num_tasks", [1, 5, 17])
def test_combine_matches_float64(rng, num_tasks):
    tree = random_tree(rng, num_tasks)
    coefficients = jnp.asarray(rng.standard_normal(num_tasks).astype(np.float32))

    combined = jax.jit(_gram.combine)(coefficients, tree)

    for name, leaf in tree.items():
        expected = np.tensordot(np.asarray(coefficients, np.float64), np.asarray(leaf, np.float64), axes=1)
        assert combined[name].shape == leaf.shape[1:]
        assert combined[name].dtype == leaf.dtype
        np.testing.assert_allclose(np.asarray(combined[name]), expected, rtol=1e-5, atol=1e-5)


def test_combine_bfloat16_keeps_dtype(rng):
    tree = jax.tree_util.tree_map(lambda leaf: leaf.astype(jnp.bfloat16), random_tree(rng, 3))
    coefficients = jnp.asarray([0.5, -1.0, 2.0], jnp.float32)

    combined = jax.jit(_gram.combine)(coefficients, tree)

    for name, leaf in tree.items():
        expected = np.tensordot(np.asarray(coefficients, np.float64), np.asarray(leaf, np.float64), axes=1)
        assert combined[name].dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(combined[name], np.float64), expected, rtol=1e-2, atol=1e-2)


def test_chunked_gram_temp_memory_is_small():
    # The loop slices each chunk inside its body, so XLA keeps no copy of the
    # leaf and the temporary memory stays far below the leaf's size.
    rows = jnp.zeros((4, 1_000_003), jnp.float32)

    compiled = jax.jit(_gram.gram_matrix).lower({"weights": rows}).compile()
    analysis = compiled.memory_analysis()

    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    assert analysis.temp_size_in_bytes < rows.nbytes // 8


def test_rescaled_gram_temp_memory_is_small():
    # A leaf below the one-product threshold still takes the chunked loop in
    # the rescaled pass, so neither pass copies the leaf.
    rows = jnp.zeros((8, _gram._DOT_MAX_COLUMNS - 1), jnp.float32)

    compiled = jax.jit(_gram.scaled_gram_matrix).lower({"weights": rows}).compile()
    analysis = compiled.memory_analysis()

    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    assert analysis.temp_size_in_bytes < rows.nbytes // 4
