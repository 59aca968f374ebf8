"""Per-task gradients from one forward pass and a vectorized backward pass."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def value_and_task_grads(loss_fn: Callable[..., Any], has_aux: bool = False) -> Callable[..., Any]:
    """Build a function that returns K task losses and their stacked gradients.

    `loss_fn(params, *args)` returns a vector of K losses. The returned
    function runs `loss_fn` forward once. It then pulls the K rows of the
    identity back through one vectorized VJP (`jax.vmap` over the
    cotangents), so each leaf of the gradients gains a leading task axis of
    size K, as the came_grad transformations expect. Gradients are taken with respect to the
    first argument only.

    Args:
      loss_fn: function of `(params, *args)` returning a 1-D array of K
        losses, or `(losses, aux)` when `has_aux` is True.
      has_aux: whether `loss_fn` returns auxiliary data as well.

    Returns:
      A function of `(params, *args)` returning `(losses, task_grads)`, or
      `((losses, aux), task_grads)` when `has_aux` is True, like
      `jax.value_and_grad`.

    Example:
      Under `jit`:

      >>> import jax, jax.numpy as jnp, came_grad
      >>> def losses(w, x):
      ...   return jnp.stack([jnp.sum(w * x), jnp.sum((w * x) ** 2)])
      >>> f = jax.jit(came_grad.value_and_task_grads(losses))
      >>> value, grads = f(jnp.ones(3), jnp.arange(3.0))
      >>> value.shape, grads.shape
      ((2,), (2, 3))

      With a Flax NNX module, split out its parameters:

      >>> from flax import nnx
      >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
      >>> graphdef, params = nnx.split(model, nnx.Param)
      >>> def task_losses(params, x, y):
      ...   out = nnx.merge(graphdef, params)(x)
      ...   return jnp.mean((out - y) ** 2, axis=0)  # one loss per output
      >>> value, grads = came_grad.value_and_task_grads(task_losses)(params, jnp.ones((4, 3)), jnp.zeros((4, 2)))
      >>> grads["kernel"][...].shape
      (2, 3, 2)
    """

    def wrapped(params, *args):
        closed = lambda p: loss_fn(p, *args)
        if has_aux:
            losses, pullback, aux = jax.vjp(closed, params, has_aux=True)
        else:
            losses, pullback = jax.vjp(closed, params)

        shape = jnp.shape(losses)
        if len(shape) != 1 or shape[0] == 0:
            raise ValueError(
                f"loss_fn must return a 1-D array of K >= 1 task losses, got shape {shape}; "
                "stack the task losses, for example with jnp.stack([loss_a, loss_b])."
            )
        cotangents = jnp.eye(shape[0], dtype=losses.dtype)
        (task_grads,) = jax.vmap(pullback)(cotangents)
        return ((losses, aux) if has_aux else losses), task_grads

    return wrapped
