"""CAGrad against a NumPy and scipy SLSQP version of the official algorithm."""

import doctest
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import came_grad
from came_grad import _cagrad

SIZE = 10


@functools.cache
def jitted_cagrad(rescale):
    """One jitted CAGrad update per rescale mode, with c injected."""
    transform = optax.inject_hyperparams(came_grad.cagrad, static_args=("rescale",))(c=0.5, rescale=rescale)
    return transform, jax.jit(transform.update)


def cagrad_update(grads, c, rescale):
    transform, update = jitted_cagrad(rescale)
    state = transform.init(jnp.zeros(grads.shape[1:], grads.dtype))
    state.hyperparams["c"] = jnp.asarray(c, jnp.float32)
    updates, _ = update(grads, state)
    return np.asarray(updates, np.float64)


def relative_error(actual, expected):
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


# SLSQP with ftol 1e-14 solves the float64 dual to about 1e-8 in the weights,
# while the library solves it in float32 from a float32 Gram matrix: about 1e-6
# relative error in the update. A wrong radius, a missing rescale factor or a
# dual stuck at the uniform start all change the update by more than 1e-2.
TOLERANCE = 1e-4


@pytest.mark.parametrize("rescale", [0, 1, 2])
@pytest.mark.parametrize("num_tasks", [2, 3, 5])
def test_official_algorithm(num_tasks, rescale, rng, cagrad_reference):
    for c in (0.2, 0.5, 0.9):
        grads = rng.normal(size=(num_tasks, SIZE))
        grads[0] -= 1.2 * grads[1]
        grads32 = jnp.asarray(grads, jnp.float32)

        expected = cagrad_reference(np.asarray(grads32), c, rescale)
        actual = cagrad_update(grads32, c, rescale)

        assert relative_error(actual, expected) < TOLERANCE, c


def test_correlated_tasks(rng, cagrad_reference):
    # Positively correlated tasks still get a move away from the mean toward the worst task.
    base = rng.normal(size=SIZE)
    grads = base + 0.3 * rng.normal(size=(3, SIZE))
    grads32 = jnp.asarray(grads, jnp.float32)

    expected = cagrad_reference(np.asarray(grads32), 0.5, 1)
    actual = cagrad_update(grads32, 0.5, 1)

    assert relative_error(actual, expected) < TOLERANCE


def test_zero_radius_mean(rng):
    grads = jnp.asarray(rng.normal(size=(3, SIZE)), jnp.float32)

    actual = cagrad_update(grads, 0.0, 1)

    np.testing.assert_allclose(actual, np.asarray(grads, np.float64).mean(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rescale, expected", [(0, 0.75), (1, 0.6), (2, 0.5)])
def test_orthogonal_unit_tasks(rescale, expected):
    # g0 = (0.5, 0.5) and a = (0.5, 0.5) by symmetry, so d = 1.5 g0 before rescaling.
    transform = came_grad.cagrad(c=0.5, rescale=rescale)
    grads = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])

    updates, _ = transform.update(grads, transform.init(jnp.zeros(2)))

    np.testing.assert_allclose(updates, [expected, expected], rtol=1e-6)


def test_docstring_example():
    result = doctest.testmod(_cagrad, optionflags=doctest.ELLIPSIS)

    assert result.failed == 0


def test_task_weights(rng, cagrad_reference):
    weights = (2.0, 0.5, 1.0)
    grads = jnp.asarray(rng.normal(size=(3, SIZE)), jnp.float32)
    weighted = np.asarray(weights)[:, None] * np.asarray(grads, np.float64)
    transform = came_grad.cagrad(c=0.5, rescale=0, task_weights=weights)

    updates, _ = jax.jit(transform.update)(grads, transform.init(jnp.zeros(SIZE)))

    expected = cagrad_reference(weighted, 0.5, 0)
    assert relative_error(np.asarray(updates, np.float64), expected) < TOLERANCE


def test_scaling_law(rng):
    grads = jnp.asarray(rng.normal(size=(3, SIZE)), jnp.float32)

    base = cagrad_update(grads, 0.5, 1)
    scaled = cagrad_update(grads * 1e-3, 0.5, 1)

    np.testing.assert_allclose(scaled, 1e-3 * base, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("c", [-0.1, float("nan")])
def test_invalid_radius(c):
    with pytest.raises(ValueError, match=r"\bc\b"):
        came_grad.cagrad(c=c)


@pytest.mark.parametrize("rescale", [3, -1])
def test_invalid_rescale(rescale):
    with pytest.raises(ValueError, match=f"rescale.*{rescale}"):
        came_grad.cagrad(rescale=rescale)
