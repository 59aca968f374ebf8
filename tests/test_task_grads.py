"""Per-task gradients from came_grad.value_and_task_grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import came_grad


def task_losses(params, inputs):
    prediction = inputs @ params["w"] + params["b"]
    return jnp.stack([jnp.sum(prediction**2), jnp.sum(jnp.sin(prediction)), jnp.mean(params["w"] ** 3)])


def make_inputs(rng):
    params = {"w": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32), "b": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}
    inputs = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    return params, inputs


def test_matches_jacrev(rng):
    params, inputs = make_inputs(rng)

    losses, grads = came_grad.value_and_task_grads(task_losses)(params, inputs)
    jacobian = jax.jacrev(task_losses)(params, inputs)

    np.testing.assert_allclose(losses, task_losses(params, inputs), rtol=1e-6)
    assert grads["w"].shape == (3, 4, 2)
    assert grads["b"].shape == (3, 2)
    for name in params:
        np.testing.assert_allclose(grads[name], jacobian[name], rtol=1e-5, atol=1e-6)


def test_under_jit(rng):
    params, inputs = make_inputs(rng)

    losses, grads = jax.jit(came_grad.value_and_task_grads(task_losses))(params, inputs)
    jacobian = jax.jacrev(task_losses)(params, inputs)

    np.testing.assert_allclose(losses, task_losses(params, inputs), rtol=1e-5)
    for name in params:
        np.testing.assert_allclose(grads[name], jacobian[name], rtol=1e-5, atol=1e-6)


def test_has_aux(rng):
    params, inputs = make_inputs(rng)

    def with_aux(params, inputs):
        return task_losses(params, inputs), {"rows": inputs.shape[0]}

    (losses, aux), grads = came_grad.value_and_task_grads(with_aux, has_aux=True)(params, inputs)
    jacobian = jax.jacrev(task_losses)(params, inputs)

    assert aux == {"rows": 5}
    np.testing.assert_allclose(losses, task_losses(params, inputs), rtol=1e-6)
    np.testing.assert_allclose(grads["w"], jacobian["w"], rtol=1e-5, atol=1e-6)


def test_single_task(rng):
    params, inputs = make_inputs(rng)

    def one_loss(params, inputs):
        return task_losses(params, inputs)[:1]

    losses, grads = came_grad.value_and_task_grads(one_loss)(params, inputs)
    expected = jax.grad(lambda p: task_losses(p, inputs)[0])(params)

    assert losses.shape == (1,)
    np.testing.assert_allclose(grads["b"][0], expected["b"], rtol=1e-5, atol=1e-6)


def test_flax_nnx_module(rng):
    model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    inputs = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    targets = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)

    def per_output_losses(params, inputs, targets):
        outputs = nnx.merge(graphdef, params)(inputs)
        return jnp.mean((outputs - targets) ** 2, axis=0)

    losses, grads = came_grad.value_and_task_grads(per_output_losses)(params, inputs, targets)
    jacobian = jax.jacrev(per_output_losses)(params, inputs, targets)

    assert losses.shape == (3,)
    assert grads["kernel"][...].shape == (3, 4, 3)
    assert grads["bias"][...].shape == (3, 3)
    np.testing.assert_allclose(grads["kernel"][...], jacobian["kernel"][...], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["bias"][...], jacobian["bias"][...], rtol=1e-5, atol=1e-6)


def test_flax_nnx_update(rng):
    # The stacked NNX gradients go straight into the transformation.
    model = nnx.Linear(4, 2, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(model, nnx.Param)
    inputs = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)

    def per_output_losses(params, inputs):
        return jnp.mean(nnx.merge(graphdef, params)(inputs) ** 2, axis=0)

    _, grads = came_grad.value_and_task_grads(per_output_losses)(params, inputs)
    transform = came_grad.linear_scalarization()
    updates, _ = transform.update(grads, transform.init(params), params)

    expected = jax.grad(lambda p: jnp.sum(per_output_losses(p, inputs)))(params)
    np.testing.assert_allclose(updates["kernel"][...], expected["kernel"][...], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda params: jnp.sum(params**2),
        lambda params: jnp.stack([params, params]),
        lambda params: jnp.zeros((0,)),
    ],
    ids=["scalar", "matrix", "empty"],
)
def test_not_vector_losses(loss_fn):
    with pytest.raises(ValueError, match="1-D"):
        came_grad.value_and_task_grads(loss_fn)(jnp.ones(3))
