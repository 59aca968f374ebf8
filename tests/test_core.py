"""Gram matrix, combination, input checks, diagnostics and use inside optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import came_grad


def make_tree(rng, num_tasks, dtype=np.float32):
    return {
        "kernel": jnp.asarray(rng.normal(size=(num_tasks, 3, 2)), dtype),
        "bias": jnp.asarray(rng.normal(size=(num_tasks, 5)), dtype),
        "gain": jnp.asarray(rng.normal(size=(num_tasks,)), dtype),
    }


def zeros_like_params(task_grads):
    return jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape[1:], leaf.dtype), task_grads)


def apply_once(transform, task_grads):
    updates, state = transform.update(task_grads, transform.init(zeros_like_params(task_grads)))
    return updates, state


# Gram matrix and combination.


def test_gram_tree(rng, flatten):
    grads = make_tree(rng, 4)
    rows = flatten(grads)

    gram = came_grad.gram_matrix(grads)

    assert gram.shape == (4, 4)
    assert gram.dtype == jnp.float32
    np.testing.assert_allclose(gram, rows @ rows.T, rtol=1e-5, atol=1e-5)


def test_gram_bfloat16_float32(rng, flatten):
    # 4096 terms of size about 1 summed in bfloat16 would lose all but 8 bits.
    grads = {"w": jnp.asarray(rng.normal(size=(3, 64, 64)), jnp.bfloat16), "b": jnp.ones((3, 7), jnp.bfloat16)}
    rows = flatten(grads)

    gram = came_grad.gram_matrix(grads)

    assert gram.dtype == jnp.float32
    np.testing.assert_allclose(gram, rows @ rows.T, rtol=1e-5, atol=1e-3)


def test_gram_small_scale(rng, flatten):
    grads = jax.tree_util.tree_map(lambda leaf: leaf * np.float32(1e-15), make_tree(rng, 3))
    rows = flatten(grads)

    gram = came_grad.gram_matrix(grads)

    np.testing.assert_allclose(gram, rows @ rows.T, rtol=1e-4, atol=0)


def test_combine_tree(rng):
    grads = make_tree(rng, 3)
    coefficients = jnp.asarray([0.5, -2.0, 1.25])

    combined = came_grad.combine(coefficients, grads)

    for name, leaf in grads.items():
        expected = np.tensordot(np.asarray(coefficients, np.float64), np.asarray(leaf, np.float64), axes=1)
        np.testing.assert_allclose(combined[name], expected, rtol=1e-5, atol=1e-6)


def test_combine_bfloat16(rng):
    grads = {"w": jnp.asarray(rng.normal(size=(2, 8)), jnp.bfloat16)}
    coefficients = jnp.asarray([1.5, 0.25])

    combined = came_grad.combine(coefficients, grads)

    expected = np.asarray([1.5, 0.25]) @ np.asarray(grads["w"], np.float64)
    assert combined["w"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(combined["w"], np.float64), expected, rtol=1e-2, atol=1e-2)


# Invalid input.


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"rho": -0.1}, r"rho.*-0\.1"),
        ({"rho": float("nan")}, r"rho.*nan"),
        ({"kappa": 0.0}, r"kappa.*0\.0"),
        ({"kappa": -1.0}, r"kappa.*-1\.0"),
        ({"nu": 1.5}, r"nu.*1\.5"),
        ({"nu": -0.2}, r"nu.*-0\.2"),
        ({"nu": optax.linear_schedule(1.5, 0.5, 10)}, r"nu.*1\.5.*step 0"),
        ({"task_weights": (1.0, -0.5)}, r"task_weights\[1\].*-0\.5"),
        ({"task_weights": (1.0, float("nan"))}, r"task_weights\[1\].*nan"),
        ({"task_weights": (float("inf"), 1.0)}, r"task_weights\[0\].*inf"),
        ({"task_weights": ()}, r"task_weights"),
        ({"num_tasks": 0}, r"num_tasks.*0"),
        ({"num_tasks": 3, "task_weights": (1.0, 2.0)}, r"num_tasks=3.*2"),
    ],
)
def test_invalid_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        came_grad.came_grad(**kwargs)


def test_weights_length_mismatch():
    transform = came_grad.came_grad(task_weights=(1.0, 2.0))
    state = transform.init(jnp.zeros(4))

    with pytest.raises(ValueError, match=r"K = 3.*built for 2"):
        transform.update(jnp.ones((3, 4)), state)


def test_num_tasks_mismatch():
    transform = came_grad.came_grad(num_tasks=3)
    state = transform.init(jnp.zeros(4))

    with pytest.raises(ValueError, match=r"K = 2.*built for 3"):
        transform.update(jnp.ones((2, 4)), state)


def test_leading_sizes_differ():
    transform = came_grad.came_grad()
    grads = {"a": jnp.ones((2, 3)), "b": jnp.ones((3,))}

    with pytest.raises(ValueError, match=r"\[2, 3\]"):
        transform.update(grads, transform.init(None))


def test_scalar_leaf():
    transform = came_grad.came_grad()
    grads = {"a": jnp.ones((2, 3)), "b": jnp.float32(1.0)}

    with pytest.raises(ValueError, match=r"\['b'\].*scalar"):
        transform.update(grads, transform.init(None))


def test_zero_tasks():
    transform = came_grad.came_grad()

    with pytest.raises(ValueError, match=r"K = 0"):
        transform.update(jnp.ones((0, 3)), transform.init(None))


def test_params_shape_mismatch():
    transform = came_grad.came_grad()

    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4,\)"):
        transform.update(jnp.ones((2, 3)), transform.init(None), params=jnp.zeros(4))


def test_invalid_under_jit():
    transform = came_grad.came_grad(num_tasks=2)
    state = transform.init(jnp.zeros(3))

    with pytest.raises(ValueError, match=r"K = 3"):
        jax.jit(transform.update)(jnp.ones((3, 3)), state)


# Diagnostics.


def test_diagnostics_values():
    # Weighted gradients h_1 = (2, 0, 0) and h_2 = (-1, 1, 0) meet at 135 degrees.
    transform = came_grad.came_grad(task_weights=(2.0, 1.0))
    grads = jnp.asarray([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0]])

    updates, state = apply_once(transform, grads)
    info = came_grad.diagnostics(state)

    np.testing.assert_allclose(info.task_norms, [2.0, np.sqrt(2.0)], rtol=1e-6)
    np.testing.assert_allclose(np.diagonal(info.cosine_similarity), [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(info.cosine_similarity[0, 1], -np.sqrt(0.5), rtol=1e-6)
    np.testing.assert_allclose(info.cosine_similarity[1, 0], -np.sqrt(0.5), rtol=1e-6)
    np.testing.assert_allclose(info.min_cosine, -np.sqrt(0.5), rtol=1e-6)
    assert bool(info.conflict)
    np.testing.assert_allclose(info.coefficients @ grads, updates, rtol=1e-6, atol=1e-6)


def test_diagnostics_no_conflict():
    transform = came_grad.came_grad(num_tasks=2)
    grads = jnp.asarray([[1.0, 0.0], [1.0, 1.0]])

    _, state = apply_once(transform, grads)
    info = came_grad.diagnostics(state)

    assert not bool(info.conflict)
    np.testing.assert_allclose(info.min_cosine, np.sqrt(0.5), rtol=1e-6)
    np.testing.assert_allclose(info.task_norms, [1.0, np.sqrt(2.0)], rtol=1e-6)


def test_diagnostics_single_task():
    transform = came_grad.came_grad(num_tasks=1)

    _, state = apply_once(transform, jnp.asarray([[3.0, 4.0]]))
    info = came_grad.diagnostics(state)

    np.testing.assert_allclose(info.task_norms, [5.0], rtol=1e-6)
    np.testing.assert_allclose(info.min_cosine, 1.0)
    assert not bool(info.conflict)


def test_diagnostics_large_scale():
    grads = jnp.asarray([[1e25, 0.0], [0.0, 2e25]])
    transform = came_grad.came_grad(num_tasks=2)

    _, state = apply_once(transform, grads)
    info = came_grad.diagnostics(state)

    np.testing.assert_allclose(info.task_norms, [1e25, 2e25], rtol=1e-5)
    np.testing.assert_allclose(info.cosine_similarity[0, 1], 0.0, atol=1e-6)


def test_diagnostics_unknown_tasks():
    transform = came_grad.came_grad()

    _, state = apply_once(transform, jnp.ones((2, 3)))

    with pytest.raises(ValueError, match="num_tasks"):
        came_grad.diagnostics(state)


def test_diagnostics_missing_state():
    state = optax.adam(1e-3).init(jnp.zeros(3))

    with pytest.raises(ValueError, match="aggregation state"):
        came_grad.diagnostics(state)


def test_diagnostics_in_chain():
    transform = optax.chain(came_grad.came_grad(num_tasks=2), optax.adamw(1e-2))
    grads = jnp.asarray([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0]])

    _, state = jax.jit(transform.update)(grads, transform.init(jnp.zeros(3)), jnp.zeros(3))
    info = came_grad.diagnostics(state)

    np.testing.assert_allclose(info.min_cosine, -np.sqrt(0.5), rtol=1e-6)


def test_diagnostics_injected():
    factory = optax.inject_hyperparams(came_grad.came_grad, static_args=("num_tasks",))
    transform = factory(rho=0.3, num_tasks=2)
    grads = jnp.asarray([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0]])

    _, state = jax.jit(transform.update)(grads, transform.init(jnp.zeros(3)))
    info = came_grad.diagnostics(state)

    assert bool(info.conflict)
    np.testing.assert_allclose(info.task_norms, [1.0, np.sqrt(2.0)], rtol=1e-6)


# Use inside optax.


def test_jit_matches_eager(rng):
    transform = came_grad.came_grad(rho=0.7, kappa=1.3, nu=0.1)
    for grads in (make_tree(rng, 2), jnp.asarray(rng.normal(size=(3, 6)), jnp.float32)):
        state = transform.init(zeros_like_params(grads))

        eager, _ = transform.update(grads, state)
        compiled, _ = jax.jit(transform.update)(grads, state)

        for eager_leaf, compiled_leaf in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(compiled)):
            np.testing.assert_allclose(compiled_leaf, eager_leaf, rtol=1e-5, atol=1e-6)


def test_training_lowers_both_losses():
    targets = jnp.asarray([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]])

    def task_losses(params):
        return jnp.sum((params["w"][None, :] - targets) ** 2, axis=1) + params["b"] ** 2

    params = {"w": jnp.asarray([3.0, -2.0, 2.0]), "b": jnp.asarray(1.0)}
    transform = optax.chain(came_grad.came_grad(), optax.adamw(1e-2))
    state = transform.init(params)
    value_and_grads = came_grad.value_and_task_grads(task_losses)

    @jax.jit
    def step(params, state):
        losses, task_grads = value_and_grads(params)
        updates, state = transform.update(task_grads, state, params)
        return optax.apply_updates(params, updates), state, losses

    initial = task_losses(params)
    for _ in range(200):
        params, state, _ = step(params, state)
    final = task_losses(params)

    assert float(final[0]) < 0.5 * float(initial[0])
    assert float(final[1]) < 0.5 * float(initial[1])


def test_injected_hyperparameters(rng):
    transform = optax.inject_hyperparams(came_grad.came_grad)(rho=0.5, kappa=1.5, nu=0.0)
    update = jax.jit(transform.update)
    grads = jnp.asarray([[1.0, 0.0], [-2.0, 1.0]])
    state = transform.init(jnp.zeros(2))

    first, state = update(grads, state)
    state.hyperparams["rho"] = jnp.asarray(0.0)
    second, _ = update(grads, state)

    # With rho = 0 the update is kappa * g_joint = 1.5 * (-1, 1).
    np.testing.assert_allclose(second, [-1.5, 1.5], rtol=1e-6)
    assert float(jnp.max(jnp.abs(first - second))) > 0.1


def test_injected_schedule():
    schedule = optax.linear_schedule(0.0, 1.0, transition_steps=4)
    transform = optax.inject_hyperparams(came_grad.came_grad)(rho=0.5, kappa=2.0, nu=schedule)
    update = jax.jit(transform.update)
    grads = jnp.asarray([[1.0, 0.0], [-2.0, 1.0]])
    state = transform.init(jnp.zeros(2))

    for _ in range(5):
        updates, state = update(grads, state)

    # nu reaches 1 at step 4, which is linear scalarization.
    np.testing.assert_allclose(updates, [-1.0, 1.0], rtol=1e-6)


def test_injected_bfloat16_params():
    transform = optax.inject_hyperparams(came_grad.came_grad)(rho=0.5)
    params = jnp.zeros(2, jnp.bfloat16)

    updates, _ = transform.update(jnp.ones((2, 2), jnp.bfloat16), transform.init(params), params)

    assert updates.dtype == jnp.bfloat16


def test_apply_if_finite_skips_nan():
    # apply_if_finite returns zeros shaped like its input on a skipped step, so it
    # wraps the optimizer after came_grad, which maps [K, n] gradients to [n].
    inner = optax.apply_if_finite(optax.sgd(0.1), max_consecutive_errors=3)
    transform = optax.chain(came_grad.came_grad(), inner)
    params = jnp.asarray([1.0, 2.0])
    state = transform.init(params)
    good = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
    bad = good.at[1, 0].set(jnp.nan)
    update = jax.jit(transform.update)

    updates, state = update(bad, state, params)
    skipped = optax.apply_updates(params, updates)

    np.testing.assert_array_equal(skipped, params)
    assert int(state[1].notfinite_count) == 1

    updates, state = update(good, state, params)
    moved = optax.apply_updates(params, updates)

    assert int(state[1].notfinite_count) == 0
    assert bool(jnp.all(moved < params))


def test_linear_scalarization_weights():
    transform = came_grad.linear_scalarization(task_weights=(1.0, 4.0))

    updates, _ = apply_once(transform, jnp.asarray([[1.0, 0.0], [0.0, 1.0]]))

    np.testing.assert_array_equal(updates, [1.0, 4.0])


def test_all_zero_task_weights_rejected():
    with pytest.raises(ValueError, match=r"at least one positive weight, got \[0.0, 0.0\]"):
        came_grad.came_grad(task_weights=(0.0, 0.0))


def test_integer_gradients_rejected():
    transform = came_grad.came_grad()

    with pytest.raises(ValueError, match="has dtype int32; gradients must be floating point"):
        transform.update({"w": jnp.ones((2, 3), jnp.int32)}, transform.init(None))


def test_diagnostics_under_nnx_optimizer():
    from flax import nnx

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.chain(came_grad.came_grad(num_tasks=2), optax.sgd(0.1)), wrt=nnx.Param)
    graphdef, params = nnx.split(model, nnx.Param)

    def task_losses(params, inputs):
        outputs = nnx.merge(graphdef, params)(inputs)
        return jnp.stack([jnp.mean(outputs[:, 0] ** 2), jnp.mean((outputs[:, 1] - 1.0) ** 2)])

    _, task_grads = came_grad.value_and_task_grads(task_losses)(params, jnp.ones((4, 3)))
    optimizer.update(model, task_grads)
    info = came_grad.diagnostics(optimizer.opt_state)

    assert isinstance(info.conflict, jax.Array)
    assert info.task_norms.shape == (2,)
    assert bool(jnp.all(info.task_norms > 0))
