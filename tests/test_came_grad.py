"""CAME-Grad against its definition: stage-by-stage float64 reference, properties, edge cases."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import came_grad

SIZE = 12


def make_tree(rng, num_tasks, dtype=np.float32):
    """Stacked task gradients of a three-leaf parameter tree."""
    return {
        "kernel": jnp.asarray(rng.normal(size=(num_tasks, 3, 2)), dtype),
        "bias": jnp.asarray(rng.normal(size=(num_tasks, 5)), dtype),
        "gain": jnp.asarray(rng.normal(size=(num_tasks,)), dtype),
    }


# One weight tuple per K, shared by the weighted tests, because each distinct
# tuple builds (and compiles) a new transformation. Weights come in equal pairs
# so that swapping the pairs permutes the tasks together with their weights.
WEIGHTS = {
    2: (0.5, 0.5),
    3: (0.7, 1.8, 0.7),
    4: (0.5, 2.0, 0.5, 2.0),
    5: (1.2, 0.4, 1.2, 0.4, 1.0),
    6: (0.3, 1.5, 0.3, 1.5, 2.0, 2.0),
}


def make_conflicting(rng, num_tasks, size=SIZE):
    """A [K, n] float32 array whose first task conflicts with the second."""
    grads = rng.normal(size=(num_tasks, size))
    if num_tasks > 1:
        grads[0] -= 1.5 * grads[1]
    return jnp.asarray(grads, jnp.float32)


def pad(values):
    """Embed small hand-made vectors (or rows) in SIZE dimensions with trailing zeros."""
    values = np.asarray(values, np.float32)
    padding = [(0, 0)] * (values.ndim - 1) + [(0, SIZE - values.shape[-1])]
    return jnp.asarray(np.pad(values, padding))


def zeros_like_params(task_grads):
    return jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape[1:], leaf.dtype), task_grads)


@functools.cache
def injected_update(task_weights):
    """One jitted CAME-Grad update per set of task weights, with rho, kappa and nu injected."""
    # float32 hyperparameters also for low-precision gradients, so that every dtype
    # is compared at the same rho, kappa and nu.
    transform = optax.inject_hyperparams(
        came_grad.came_grad, static_args=("task_weights",), hyperparam_dtype=jnp.float32
    )(rho=0.5, kappa=1.5, nu=0.2, task_weights=task_weights)
    return transform, jax.jit(transform.update)


def aggregate(task_grads, rho=0.5, kappa=1.5, nu=0.2, task_weights=None):
    """Return the CAME-Grad update of `task_grads` through a cached jitted transformation."""
    transform, update = injected_update(task_weights)
    state = transform.init(zeros_like_params(task_grads))
    state.hyperparams["rho"] = jnp.asarray(rho, jnp.float32)
    state.hyperparams["kappa"] = jnp.asarray(kappa, jnp.float32)
    state.hyperparams["nu"] = jnp.asarray(nu, jnp.float32)
    updates, _ = update(task_grads, state)
    return updates


def as_vector(tree):
    leaves = jax.tree_util.tree_leaves(tree)
    return np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in leaves])


def relative_error(actual, expected):
    return np.linalg.norm(np.asarray(actual, np.float64) - expected) / np.linalg.norm(expected)


# Float32 Gram matrices and a float32 interior-point dual solver leave about 1e-5
# relative error on well-conditioned random inputs, so 1e-4 separates rounding
# from a wrong formula (a missing 1 + rho**2 factor or a wrong stage is > 1e-2).
REFERENCE_TOLERANCE = 1e-4


@pytest.mark.parametrize("num_tasks", [2, 3, 4, 5, 6])
def test_reference_weighted_tasks(num_tasks, rng, came_reference):
    weights = WEIGHTS[num_tasks]
    grads = make_conflicting(rng, num_tasks)

    for rho, kappa, nu in [(0.3, 1.5, 0.2), (0.8, 0.7, 0.0), (1.5, 2.0, 0.6)]:
        expected = came_reference(np.asarray(grads), weights, rho, kappa, nu)
        actual = aggregate(grads, rho, kappa, nu, task_weights=weights)
        assert relative_error(actual, expected) < REFERENCE_TOLERANCE, (rho, kappa, nu)


def test_reference_tree(rng, came_reference, flatten):
    grads = make_tree(rng, 3)
    expected = came_reference(flatten(grads), None, 0.5, 1.5, 0.2)

    updates = aggregate(grads)

    assert jax.tree_util.tree_structure(updates) == jax.tree_util.tree_structure(zeros_like_params(grads))
    assert updates["kernel"].shape == (3, 2)
    assert updates["gain"].shape == ()
    assert relative_error(as_vector(updates), expected) < REFERENCE_TOLERANCE


def test_reference_schedules(rng, came_reference):
    grads = make_conflicting(rng, 3)
    rho = optax.linear_schedule(0.0, 1.5, transition_steps=10)
    kappa = optax.linear_schedule(2.0, 1.0, transition_steps=10)
    nu = optax.linear_schedule(0.6, 0.0, transition_steps=10)
    transform = came_grad.came_grad(rho=rho, kappa=kappa, nu=nu)
    update = jax.jit(transform.update)
    state = transform.init(jnp.zeros(SIZE))

    for step in range(13):
        updates, state = update(grads, state)
        if step in (0, 4, 7, 12):
            expected = came_reference(np.asarray(grads), None, float(rho(step)), float(kappa(step)), float(nu(step)))
            assert relative_error(updates, expected) < REFERENCE_TOLERANCE, step


def test_nu_one_linear_scalarization(rng):
    weights = WEIGHTS[3]
    grads = make_tree(rng, 3)
    linear = came_grad.linear_scalarization(task_weights=weights)
    expected, _ = linear.update(grads, linear.init(zeros_like_params(grads)))

    updates = aggregate(grads, rho=0.9, kappa=3.0, nu=1.0, task_weights=weights)

    for name in grads:
        np.testing.assert_array_equal(updates[name], expected[name])


def test_nu_one_weighted_sum(rng):
    grads = make_conflicting(rng, 4)
    weights = WEIGHTS[4]
    expected = np.asarray(weights) @ np.asarray(grads, np.float64)

    updates = aggregate(grads, rho=0.9, kappa=3.0, nu=1.0, task_weights=weights)

    np.testing.assert_allclose(updates, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("nu", [0.0, 0.3, 1.0])
def test_rho_zero_scaled_joint(nu, rng, flatten):
    grads = make_tree(rng, 3)
    kappa = 1.7
    joint = flatten(grads).sum(axis=0)

    updates = aggregate(grads, rho=0.0, kappa=kappa, nu=nu)

    np.testing.assert_allclose(as_vector(updates), ((1 - nu) * kappa + nu) * joint, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rho", [0.0, 0.5, 2.0])
def test_single_task(rho, rng):
    grads = make_tree(rng, 1)
    weight, kappa, nu = 2.5, 1.5, 0.2

    updates = aggregate(grads, rho=rho, kappa=kappa, nu=nu, task_weights=(weight,))

    factor = ((1 - nu) * kappa + nu) * weight
    for name in grads:
        np.testing.assert_allclose(updates[name], factor * np.asarray(grads[name][0]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [1e-3, 0.37, 8.0, 1e3])
def test_scaling_law(scale, rng):
    grads = make_tree(rng, 3)
    scaled = jax.tree_util.tree_map(lambda leaf: leaf * scale, grads)

    base = as_vector(aggregate(grads))
    updates = as_vector(aggregate(scaled))

    np.testing.assert_allclose(updates, scale * base, rtol=1e-5, atol=1e-6 * scale)


def test_permutation_invariance(rng):
    weights = WEIGHTS[4]
    order = [2, 3, 0, 1]
    grads = make_conflicting(rng, 4)
    permuted_weights = tuple(weights[i] for i in order)

    updates = aggregate(grads, task_weights=weights)
    permuted = aggregate(grads[jnp.asarray(order)], task_weights=permuted_weights)

    np.testing.assert_allclose(permuted, updates, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_tasks", [2, 3, 5])
@pytest.mark.parametrize("rho", [1.0, 2.0])
def test_nu_zero_conflict_free(num_tasks, rho, rng):
    weights = WEIGHTS[num_tasks]
    grads = make_conflicting(rng, num_tasks)
    weighted = np.asarray(weights)[:, None] * np.asarray(grads, np.float64)

    updates = np.asarray(aggregate(grads, rho=rho, kappa=1.5, nu=0.0, task_weights=weights), np.float64)

    products = weighted @ updates
    bound = 1e-5 * np.linalg.norm(weighted, axis=1) * np.linalg.norm(updates)
    assert np.all(products >= -bound), products


solve_dual = jax.jit(came_grad.solve_dual)


@pytest.mark.parametrize("num_tasks", [3, 5])
@pytest.mark.parametrize("rho", [0.2, 0.7, 1.5])
def test_s1_optimal(num_tasks, rho, rng, rectified_primal):
    # The stage-one direction is mu + rho ||mu|| h_a / ||h_a|| with a from solve_dual.
    grads = np.asarray(make_conflicting(rng, num_tasks), np.float64)
    gram = grads @ grads.T
    largest = np.max(np.diagonal(gram))
    mean = grads.mean(axis=0)
    radius = rho * np.linalg.norm(mean)

    weights = np.asarray(
        solve_dual(jnp.asarray(gram / largest, jnp.float32), jnp.float32(radius / np.sqrt(largest))),
        np.float64,
    )
    combined = weights @ grads
    direction = mean + radius * combined / np.linalg.norm(combined)
    best = rectified_primal(grads, radius)

    assert np.all(weights >= 0)
    assert abs(weights.sum() - 1.0) < 1e-5
    assert np.linalg.norm(direction - mean) <= radius * (1 + 1e-9)
    assert np.min(grads @ direction) >= np.min(grads @ best) - 1e-5 * largest


def test_update_direction_optimal(rng, rectified_primal):
    grads = make_conflicting(rng, 4)
    grads64 = np.asarray(grads, np.float64)
    rho = 0.8
    radius = rho * np.linalg.norm(grads64.mean(axis=0))
    best = rectified_primal(grads64, radius)

    updates = np.asarray(aggregate(grads, rho=rho, kappa=1.0, nu=0.0), np.float64)

    cosine = updates @ best / (np.linalg.norm(updates) * np.linalg.norm(best))
    assert cosine > 1 - 1e-6
    np.testing.assert_allclose(np.linalg.norm(updates), np.linalg.norm(grads64.sum(axis=0)), rtol=1e-5)


def test_zero_gradients():
    grads = jax.tree_util.tree_map(jnp.zeros_like, make_tree(np.random.default_rng(0), 3))

    updates = aggregate(grads)

    for name in grads:
        assert np.all(np.asarray(updates[name]) == 0)


@pytest.mark.parametrize("num_tasks", [2, 3])
def test_identical_gradients(num_tasks, rng):
    row = rng.normal(size=SIZE)
    grads = jnp.asarray(np.tile(row, (num_tasks, 1)), jnp.float32)
    kappa, nu = 1.5, 0.2

    updates = aggregate(grads, rho=0.8, kappa=kappa, nu=nu)

    expected = ((1 - nu) * kappa + nu) * num_tasks * row
    np.testing.assert_allclose(updates, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nu", [0.0, 0.2])
def test_opposite_gradients(nu, rng):
    row = rng.normal(size=SIZE)
    grads = jnp.asarray(np.stack([row, -row]), jnp.float32)

    updates = np.asarray(aggregate(grads, rho=0.5, kappa=1.5, nu=nu))

    assert np.all(np.isfinite(updates))
    np.testing.assert_allclose(updates, 0.0, atol=1e-6)


def test_opposite_weighted_gradients(rng):
    # Equal and opposite weighted gradients h_1 = -h_2 give g_joint = 0.
    row = rng.normal(size=SIZE).astype(np.float32)
    grads = jnp.asarray(np.stack([row, -2.0 * row]))

    updates = np.asarray(aggregate(grads, task_weights=(2.0, 1.0)))  # h_1 = 2 g_1 = -h_2

    assert np.all(np.isfinite(updates))
    np.testing.assert_allclose(updates, 0.0, atol=1e-6)


def test_symmetric_tasks():
    # Three gradients 120 degrees apart in the xy-plane share a z component, so by
    # symmetry the best direction in the ball around mu = (0, 0, 0.5) is the z-axis.
    grads = pad([[1.0, 0.0, 0.5], [-0.5, 0.8660254, 0.5], [-0.5, -0.8660254, 0.5]])

    updates = aggregate(grads, rho=0.5, kappa=1.5, nu=0.0)

    np.testing.assert_allclose(updates, pad([0.0, 0.0, 1.5 * 1.5]), atol=1e-5)


@pytest.mark.parametrize("nu", [0.0, 0.4])
def test_stationary_hull(nu):
    # Zero lies in the hull of h_1 and h_2, so h_a = 0 and u_rect = mu = (0, 1/3):
    # the update points along y with length ((1 - nu) kappa + nu) ||g_joint||.
    grads = pad([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    kappa = 1.5

    updates = aggregate(grads, rho=0.5, kappa=kappa, nu=nu)

    np.testing.assert_allclose(updates, pad([0.0, (1 - nu) * kappa + nu]), atol=1e-5)


def test_near_opposite_vanishing_joint(rng):
    # ||g_joint|| is 1e-4 of ||g_i||, below the float32 resolution of 1^T G 1,
    # so the joint gradient counts as vanishing: u_en = 0 and only nu g_joint is left.
    row = rng.normal(size=SIZE)
    other = rng.normal(size=SIZE)
    grads = jnp.asarray(np.stack([row, -row + 1e-4 * other]), jnp.float32)
    joint = np.asarray(grads, np.float64).sum(axis=0)

    updates = aggregate(grads, rho=0.5, kappa=1.5, nu=0.3)

    # The float32 sum of nearly opposite rows loses about 1e-7 of ||g_i|| per entry.
    np.testing.assert_allclose(updates, 0.3 * joint, rtol=1e-3, atol=1e-6)


def test_near_opposite_resolved_joint(rng, came_reference):
    # At 1e-1 of ||g_i|| the Gram matrix resolves ||g_joint||, and S2 keeps kappa ||g_joint||.
    row = rng.normal(size=SIZE)
    other = rng.normal(size=SIZE)
    grads = jnp.asarray(np.stack([row, -row + 1e-1 * other]), jnp.float32)
    expected = came_reference(np.asarray(grads, np.float64), None, 0.5, 1.5, 0.0)

    updates = aggregate(grads, rho=0.5, kappa=1.5, nu=0.0)

    np.testing.assert_allclose(np.linalg.norm(updates), np.linalg.norm(expected), rtol=1e-3)


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e-10, 1e10, 1e20, 1e30])
def test_extreme_scales(scale, rng):
    grads = make_tree(rng, 3)
    scaled = jax.tree_util.tree_map(lambda leaf: leaf * np.float32(scale), grads)

    base = as_vector(aggregate(grads))
    updates = as_vector(aggregate(scaled))

    assert np.all(np.isfinite(updates))
    np.testing.assert_allclose(updates / scale, base, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_update(bad, rng):
    grads = jax.tree_util.tree_map(np.array, make_tree(rng, 3))
    grads["bias"][1, 2] = bad

    updates = aggregate(grads)

    for name in grads:
        assert not np.any(np.isfinite(np.asarray(updates[name]))), name


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_dtype(dtype, rng):
    grads32 = make_tree(rng, 3)
    grads = jax.tree_util.tree_map(lambda leaf: leaf.astype(dtype), grads32)
    rounded = jax.tree_util.tree_map(lambda leaf: leaf.astype(jnp.float32), grads)

    updates = aggregate(grads)
    expected = aggregate(rounded)

    for name in grads:
        assert updates[name].dtype == dtype
        assert np.all(np.isfinite(np.asarray(updates[name], np.float32)))
    # One rounding of the result to 8 (bfloat16) or 11 (float16) significant bits.
    tolerance = 1e-2 if dtype == jnp.bfloat16 else 2e-3
    np.testing.assert_allclose(as_vector(updates), as_vector(expected), rtol=tolerance, atol=tolerance)


def test_bfloat16_small_values(rng):
    # bfloat16 squares of 1e-25 underflow in float32, so the Gram matrix must be rescaled.
    grads = jax.tree_util.tree_map(lambda leaf: (leaf * 1e-25).astype(jnp.bfloat16), make_tree(rng, 3))
    rounded = jax.tree_util.tree_map(lambda leaf: leaf.astype(jnp.float32) * 1e25, grads)

    updates = as_vector(aggregate(grads)) * 1e25
    expected = as_vector(aggregate(rounded))

    assert np.all(np.isfinite(updates))
    np.testing.assert_allclose(updates, expected, rtol=1e-2, atol=1e-2)


def test_coefficients_public(rng):
    grads = np.asarray(make_conflicting(rng, 3), np.float64)
    gram = grads @ grads.T
    coefficients_fn = jax.jit(came_grad.came_grad_coefficients)
    coefficients = coefficients_fn(jnp.asarray(gram / gram.max(), jnp.float32), 0.5, 1.5, 0.2)

    updates = np.asarray(aggregate(jnp.asarray(grads, jnp.float32)), np.float64)

    np.testing.assert_allclose(np.asarray(coefficients, np.float64) @ grads, updates, rtol=1e-5, atol=1e-5)
