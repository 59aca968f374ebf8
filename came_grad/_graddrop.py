"""GradDrop: gradient sign dropout, a per-element method outside the Gram-matrix layer."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from came_grad import _aggregation
from came_grad import _validation


class GradDropState(NamedTuple):
    """State of `graddrop`: the step count and the raw data of its PRNG key."""

    count: jax.Array
    key: jax.Array


def graddrop(
    leak: _validation.ScalarOrSchedule = 0.0,
    *,
    num_tasks: int | None = None,
    seed: int = 0,
) -> optax.GradientTransformation:
    """Aggregate stacked task gradients with GradDrop (gradient sign dropout).

    For every element, the sign purity `P = 0.5 (1 + sum_i g_i / sum_i |g_i|)`
    is the probability of keeping the positive side. With `U` uniform on
    [0, 1), drawn once per element and shared by the tasks, task i keeps its
    element when `P > U` and `g_i > 0`, or `P < U` and `g_i < 0`. With leak
    `l`, the update is `sum_i (l g_i + (1 - l) mask_i g_i)`. Elements where
    every task has a zero gradient give `P = 0.5`.

    GradDrop decides per element on the signs of the gradients, so its
    update is not a combination `sum_i c_i g_i` with coefficients that follow
    from the Gram matrix. It is therefore a plain optax transformation with
    its own PRNG key, not a weighting: it takes no `task_weights` and records
    no `came_grad.diagnostics`. Scale the task gradients before it if needed.

    Departures from the paper: the paper applies GradDrop to the gradients
    with respect to a shared activation layer, before backpropagating into
    the shared parameters. Here it acts on the stacked parameter gradients
    it is given, and the leak is one value for all tasks.

    Args:
      leak: fraction in [0, 1] of each task gradient that passes unmasked;
        float or schedule. Schedule values outside the range are clipped into
        it at run time.
      num_tasks: K, when known; the update then checks that the gradients
        have K tasks.
      seed: seed of the PRNG key that draws `U`.

    Returns:
      An `optax.GradientTransformation`.

    Example:
      >>> import jax.numpy as jnp, came_grad
      >>> tx = came_grad.graddrop()
      >>> grads = jnp.array([[1.0, 2.0], [3.0, -2.0]])
      >>> updates, _ = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> updates[0].item()
      4.0

    References:
      Chen, Ngiam, Huang, Luong, Kretzschmar, Chai and Anguelov, "Just Pick a
      Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout",
      NeurIPS 2020. https://arxiv.org/abs/2010.06808
    """
    _validation.check_scalar("leak", leak, lower=0.0, upper=1.0)
    known_tasks = _validation.check_num_tasks(num_tasks, None)

    def init_fn(params):
        del params
        return GradDropState(
            count=jnp.zeros([], jnp.int32),
            key=jax.random.key_data(jax.random.key(seed)),
        )

    def update_fn(task_grads, state, params=None):
        size = _validation.task_count(task_grads)
        _validation.check_params_match(task_grads, params)
        if known_tasks is not None and size != known_tasks:
            raise ValueError(
                f"task_grads has K = {size} tasks but the transformation was built for "
                f"{known_tasks} (num_tasks); stack one gradient per task."
            )

        leak_now = jnp.clip(_aggregation.evaluate(leak, state.count), 0.0, 1.0)
        key, step_key = jax.random.split(jax.random.wrap_key_data(state.key))
        leaves, treedef = jax.tree_util.tree_flatten(task_grads)
        leaf_keys = jax.random.split(step_key, len(leaves))
        updates = [_drop_leaf(leaf, leaf_key, leak_now) for leaf, leaf_key in zip(leaves, leaf_keys)]

        new_state = GradDropState(count=optax.safe_increment(state.count), key=jax.random.key_data(key))
        return jax.tree_util.tree_unflatten(treedef, updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def _drop_leaf(leaf: jax.Array, key: jax.Array, leak: jax.Array) -> jax.Array:
    """Return GradDrop's combination of one leaf's task gradients, in the leaf's dtype."""
    compute_dtype = jnp.float64 if leaf.dtype == jnp.float64 else jnp.float32
    grads = leaf.astype(compute_dtype)

    # Divide by the largest magnitude first so that the sums cannot overflow.
    # The purity is a ratio, so it does not change.
    largest = jnp.max(jnp.abs(grads), axis=0)
    scaled = grads / jnp.where(largest > 0, largest, 1.0)
    total = jnp.sum(scaled, axis=0)
    magnitude = jnp.sum(jnp.abs(scaled), axis=0)
    purity = 0.5 * (1.0 + total / jnp.where(magnitude > 0, magnitude, 1.0))

    uniform = jax.random.uniform(key, purity.shape, compute_dtype)
    keep = ((purity > uniform) & (grads > 0)) | ((purity < uniform) & (grads < 0))
    leak = leak.astype(compute_dtype)
    combined = jnp.sum(leak * grads + (1.0 - leak) * jnp.where(keep, grads, 0.0), axis=0)
    return combined.astype(leaf.dtype)
