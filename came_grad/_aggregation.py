"""The middle layer: a weighting (Gram matrix to K coefficients) made into an optax transformation."""

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from came_grad import _gram
from came_grad import _validation

WeightingState = Any


class Weighting(NamedTuple):
    """A rule that maps the Gram matrix of K task gradients to K coefficients.

    Attributes:
      init: `init(num_tasks)` returns the weighting's initial state.
        `num_tasks` is K when it is known at construction and None otherwise;
        a weighting whose state needs K should raise ValueError on None.
      update: `update(gram, state, key, count)` returns `(coefficients,
        new_state)`. `gram` is the K x K Gram matrix of the weighted task
        gradients `h_i = w_i g_i`, divided by a positive constant (its
        largest diagonal entry) so that it stays finite for any gradient
        scale. The update is `sum_i coefficients[i] * h_i`, so the
        coefficients must not depend on that constant: every method built
        this way scales its update with the gradients. `key` is a PRNG key
        for this step and `count` the number of updates made so far (for
        schedules).
    """

    init: Callable[[int | None], WeightingState]
    update: Callable[[jax.Array, WeightingState, jax.Array, jax.Array], tuple[jax.Array, WeightingState]]


def stateless_weighting(coefficients: Callable[[jax.Array, jax.Array], jax.Array]) -> Weighting:
    """Make a `Weighting` without state or randomness from `coefficients(gram, count)`."""

    def update(gram, state, key, count):
        del key
        return coefficients(gram, count), state

    return Weighting(init=lambda num_tasks: (), update=update)


class Diagnostics(NamedTuple):
    """Per-step statistics of the task gradients, recorded by the aggregation state.

    Attributes:
      task_norms: `||w_i g_i||` for each task, shape [K].
      cosine_similarity: pairwise cosine similarities of the task gradients,
        shape [K, K] (0 where a gradient is zero).
      coefficients: `c` such that the update is `sum_i c_i g_i` (task weights
        included), shape [K].
      min_cosine: the smallest off-diagonal cosine similarity (1 for K = 1).
      conflict: whether some pair of task gradients has a negative inner
        product, that is `min_cosine < 0`.
    """

    task_norms: jax.Array
    cosine_similarity: jax.Array
    coefficients: jax.Array
    min_cosine: jax.Array
    conflict: jax.Array


class AggregationState(NamedTuple):
    """State of a transformation built by `from_weighting`."""

    count: jax.Array
    key: jax.Array
    weighting_state: WeightingState
    diagnostics: Diagnostics | None


def _empty_diagnostics(num_tasks: int) -> Diagnostics:
    return Diagnostics(
        task_norms=jnp.zeros((num_tasks,), jnp.float32),
        cosine_similarity=jnp.eye(num_tasks, dtype=jnp.float32),
        coefficients=jnp.zeros((num_tasks,), jnp.float32),
        min_cosine=jnp.ones([], jnp.float32),
        conflict=jnp.zeros([], jnp.bool_),
    )


def _compute_diagnostics(gram: jax.Array, scale: jax.Array, coefficients: jax.Array) -> Diagnostics:
    num_tasks = gram.shape[0]
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    denominator = jnp.outer(norms, norms)
    cosine = jnp.where(denominator > 0, gram / jnp.where(denominator > 0, denominator, 1.0), 0.0)
    cosine = jnp.clip(cosine, -1.0, 1.0)
    off_diagonal = jnp.where(jnp.eye(num_tasks, dtype=bool), jnp.inf, cosine)
    min_cosine = jnp.minimum(jnp.min(off_diagonal), 1.0)
    return Diagnostics(
        task_norms=(norms * scale).astype(jnp.float32),
        cosine_similarity=cosine.astype(jnp.float32),
        coefficients=coefficients.astype(jnp.float32),
        min_cosine=min_cosine.astype(jnp.float32),
        conflict=min_cosine < 0,
    )


def from_weighting(
    weighting: Weighting,
    *,
    task_weights=None,
    num_tasks: int | None = None,
    seed: int = 0,
) -> optax.GradientTransformation:
    """Build an optax transformation that aggregates stacked task gradients with `weighting`.

    The update makes two passes over the gradients, whatever the method: one
    for the K x K Gram matrix (tree-wise inner products accumulated in
    float32, leaves never concatenated) and one for the weighted combination
    over the task axis. Between them the weighting solves a K-dimensional
    problem on the device.

    Args:
      weighting: the rule that maps the Gram matrix to coefficients.
      task_weights: optional non-negative weights `w_i`, one per task. The weighting receives the Gram
        matrix of the gradients `w_i g_i`. Default: all 1.
      num_tasks: K, when known at construction. It is implied by
        `task_weights`. When K is known, the state records `Diagnostics` and
        the update checks that the gradients have K tasks.
      seed: seed of the PRNG key that the state passes to the weighting.

    Returns:
      An `optax.GradientTransformation` whose `update(task_grads, state,
      params=None)` takes a pytree whose leaves have a leading task axis of
      size K and returns updates shaped like one task's gradient.
    """
    weights = _validation.check_task_weights(task_weights)
    known_tasks = _validation.check_num_tasks(num_tasks, weights)

    def init_fn(params):
        del params
        return AggregationState(
            count=jnp.zeros([], jnp.int32),
            key=jax.random.key_data(jax.random.key(seed)),
            weighting_state=weighting.init(known_tasks),
            diagnostics=None if known_tasks is None else _empty_diagnostics(known_tasks),
        )

    def update_fn(task_grads, state, params=None):
        size = _validation.task_count(task_grads)
        _validation.check_params_match(task_grads, params)
        if known_tasks is not None and size != known_tasks:
            raise ValueError(
                f"task_grads has K = {size} tasks but the transformation was built for "
                f"{known_tasks} (num_tasks or len(task_weights)); stack one gradient per task."
            )

        raw_gram, scale = _gram.scaled_gram_matrix(task_grads)
        task_scale = jnp.ones((size,), raw_gram.dtype) if weights is None else jnp.asarray(weights, raw_gram.dtype)
        gram = raw_gram * jnp.outer(task_scale, task_scale)

        # Normalize so that the largest diagonal entry is 1; all-zero stays zero.
        largest = jnp.max(jnp.diagonal(gram))
        safe_largest = jnp.where(largest > 0, largest, 1.0)
        normalized = gram / safe_largest

        key, step_key = jax.random.split(jax.random.wrap_key_data(state.key))
        coefficients, weighting_state = weighting.update(normalized, state.weighting_state, step_key, state.count)
        coefficients = coefficients.astype(raw_gram.dtype) * task_scale
        updates = _gram.combine(coefficients, task_grads)

        diagnostics = state.diagnostics
        if diagnostics is not None:
            diagnostics = _compute_diagnostics(gram, scale, coefficients)
        new_state = AggregationState(
            count=optax.safe_increment(state.count),
            key=jax.random.key_data(key),
            weighting_state=weighting_state,
            diagnostics=diagnostics,
        )
        return updates, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def diagnostics(state) -> Diagnostics:
    """Return the `Diagnostics` recorded by the last update, from any optimizer state.

    Looks through a chain, `optax.inject_hyperparams` or other nesting for the
    state of a transformation built by `from_weighting`. Nothing is
    recomputed: the values were stored by the update.

    Args:
      state: the optimizer state, for example of
        `optax.chain(came_grad.came_grad(num_tasks=2), optax.adam(1e-3))`.

    Returns:
      The recorded diagnostics.

    Raises:
      ValueError: if no aggregation state is found, or it records no
        diagnostics because the number of tasks was not given.

    Example:
      >>> import jax.numpy as jnp, optax, came_grad
      >>> tx = optax.chain(came_grad.came_grad(num_tasks=2), optax.sgd(0.1))
      >>> state = tx.init(jnp.zeros(3))
      >>> grads = jnp.array([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0]])
      >>> _, state = tx.update(grads, state)
      >>> info = came_grad.diagnostics(state)
      >>> bool(info.conflict), round(float(info.min_cosine), 3)
      (True, -0.707)
    """
    found = [
        leaf
        for leaf in jax.tree_util.tree_leaves(state, is_leaf=lambda node: isinstance(node, AggregationState))
        if isinstance(leaf, AggregationState)
    ]
    if not found:
        raise ValueError(
            "no came_grad aggregation state found in the optimizer state; pass the state of a "
            "transformation built by came_grad (for example came_grad.came_grad)."
        )
    if found[0].diagnostics is None:
        raise ValueError(
            "the aggregation state records no diagnostics because the number of tasks was unknown at "
            "construction; pass num_tasks=K or task_weights to the transformation."
        )
    # Flax's nnx.Optimizer wraps every array of the optax state in a Variable.
    return jax.tree_util.tree_map(_unwrap_variable, found[0].diagnostics, is_leaf=_is_variable)


def _is_variable(value) -> bool:
    return not isinstance(value, (jax.Array, np.ndarray)) and hasattr(value, "get_value")


def _unwrap_variable(value):
    return value.get_value() if _is_variable(value) else value


def evaluate(value, count: jax.Array) -> jax.Array:
    """Return a hyperparameter's value at step `count`, calling it when it is a schedule."""
    return jnp.asarray(value(count) if callable(value) else value, jnp.float32)
