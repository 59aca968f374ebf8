"""Checks of hyperparameters and of stacked task gradients, with messages that name the value."""

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], jax.Array]


def _concrete_float(value: Any) -> float | None:
    """Return `value` as a Python float, or None when it is traced or not a scalar."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        return None
    if array.shape != () or not jnp.issubdtype(array.dtype, jnp.number):
        return None
    return float(array)


def check_scalar(
        name: str,
        value: ScalarOrSchedule,
        *,
        lower: float | None = None,
        upper: float | None = None,
        lower_inclusive: bool = True,
) -> None:
    """Raise ValueError unless `value` (or a schedule's value at step 0) lies in range.

    Traced values, as `optax.inject_hyperparams` passes under `jit`, cannot be
    checked and are accepted as they are.
    """
    if callable(value):
        try:
            first = value(jnp.zeros([], jnp.int32))
        except Exception as error:  # A schedule may raise anything; report which one failed.
            raise ValueError(
                    f"{name} is a schedule that failed at step 0: {error!r}. Pass a float "
                    "or an optax schedule that maps the step count to a float."
            ) from error
        _check_float(name, first, lower, upper, lower_inclusive, suffix=" (schedule value at step 0)")
        return
    _check_float(name, value, lower, upper, lower_inclusive, suffix="")


def _check_float(name, value, lower, upper, lower_inclusive, suffix):
    number = _concrete_float(value)
    if number is None:
        if isinstance(value, jax.core.Tracer):
            return
        raise ValueError(f"{name} must be a float or an optax schedule, got {value!r}{suffix}.")
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}{suffix}.")
    if lower is not None:
        if lower_inclusive and number < lower:
            raise ValueError(f"{name} must be >= {lower}, got {number}{suffix}.")
        if not lower_inclusive and number <= lower:
            raise ValueError(f"{name} must be > {lower}, got {number}{suffix}.")
    if upper is not None and number > upper:
        raise ValueError(f"{name} must be <= {upper}, got {number}{suffix}.")


def vanishing_squared_norm(gram: jax.Array) -> jax.Array:
    """Return the squared norm below which a combination of the task gradients counts as zero.

    Norms of sums such as `g_joint = sum_i h_i` come from the Gram matrix as
    `1^T G 1`, which cancels when the gradients nearly oppose each other.
    Entries accurate to a relative `eps` of the largest diagonal entry give
    the squared norm only to about that much. Below `64 * eps` times the
    largest diagonal entry (a norm ratio of about 3e-3 in float32 and 1e-7
    in float64) the direction of the combination is rounding noise, so the
    methods treat it as zero.
    """
    largest = jnp.max(jnp.diagonal(gram))
    return 64.0 * jnp.finfo(gram.dtype).eps * largest


def check_task_weights(task_weights: Sequence[float] | jax.Array | None) -> np.ndarray | None:
    """Return the task weights as a float64 NumPy vector, or raise ValueError naming the bad entry."""
    if task_weights is None:
        return None
    if isinstance(task_weights, jax.core.Tracer):
        raise ValueError(
                "task_weights must be concrete numbers known when the transformation is "
                "built, got a traced array. Build the transformation outside jit."
        )
    weights = np.asarray(task_weights, dtype=np.float64)
    if weights.ndim != 1 or weights.size == 0:
        raise ValueError(
                f"task_weights must be a non-empty 1-D sequence with one weight per task, got shape {weights.shape}."
        )
    for index, weight in enumerate(weights):
        if not math.isfinite(weight):
            raise ValueError(f"task_weights[{index}] must be finite, got {weight}.")
        if weight < 0:
            raise ValueError(f"task_weights[{index}] must be >= 0, got {weight}.")
    if not np.any(weights > 0):
        raise ValueError(
            f"task_weights must contain at least one positive weight, got {weights.tolist()}; "
            "all-zero weights would make every update zero."
        )
    return weights


def check_num_tasks(num_tasks: int | None, task_weights: np.ndarray | None) -> int | None:
    """Return the number of tasks known at construction, checking that the two sources agree."""
    if num_tasks is not None:
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, (int, np.integer)) or num_tasks < 1:
            raise ValueError(
            f"num_tasks must be a positive Python int, got {num_tasks!r}. Under "
            "optax.inject_hyperparams, list it in static_args=('num_tasks',)."
        )
        num_tasks = int(num_tasks)
    if task_weights is not None:
        if num_tasks is not None and num_tasks != task_weights.size:
            raise ValueError(
                    f"num_tasks={num_tasks} differs from len(task_weights)={task_weights.size}; pass one weight per task."
            )
        num_tasks = task_weights.size
    return num_tasks


def task_count(task_grads: Any) -> int:
    """Return K, the leading task-axis size shared by every leaf of `task_grads`.

    Raises:
        ValueError: if the tree has no leaves, a leaf has no leading axis, the
            leading sizes differ, or K is 0.
    """
    leaves_with_paths = jax.tree_util.tree_leaves_with_path(task_grads)
    if not leaves_with_paths:
        raise ValueError("task_grads has no array leaves; pass a pytree whose leaves have a leading task axis.")

    sizes = {}
    for path, leaf in leaves_with_paths:
        where = jax.tree_util.keystr(path) or "<root>"
        shape = jnp.shape(leaf)
        if len(shape) == 0:
            raise ValueError(
                    f"task_grads leaf {where} is a scalar without a leading task axis; stack the "
                    "per-task gradients along axis 0 (for example with came_grad.value_and_task_grads)."
            )
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"task_grads leaf {where} has dtype {dtype}; gradients must be floating point. "
                "Cast the leaf to a float dtype, or leave integer parameters out of the gradients."
            )
        sizes[where] = shape[0]

    distinct = sorted(set(sizes.values()))
    if len(distinct) > 1:
        listing = ", ".join(f"{where}: {size}" for where, size in sizes.items())
        raise ValueError(
                f"task_grads leaves have different leading (task) sizes {distinct} ({listing}); every leaf "
                "must stack the same K task gradients along axis 0."
        )
    if distinct[0] == 0:
        raise ValueError("task_grads has K = 0 tasks (leading axis of size 0); pass at least one task gradient.")
    return int(distinct[0])


def check_params_match(task_grads: Any, params: Any) -> None:
    """Raise ValueError when `params` is given and its shapes differ from the per-task gradient shapes."""
    if params is None:
        return
    grad_leaves = jax.tree_util.tree_leaves_with_path(task_grads)
    param_leaves = jax.tree_util.tree_leaves(params)
    if len(grad_leaves) != len(param_leaves):
        return  # Structures may differ legitimately (for example optax.MaskedNode); leave that to optax.
    for (path, grad), param in zip(grad_leaves, param_leaves):
        if tuple(jnp.shape(grad)[1:]) != tuple(jnp.shape(param)):
            where = jax.tree_util.keystr(path) or "<root>"
            raise ValueError(
                    f"task_grads leaf {where} has shape {tuple(jnp.shape(grad))}, which does not match the "
                    f"parameter shape {tuple(jnp.shape(param))} with a leading task axis; expected "
                    f"(K, {', '.join(map(str, jnp.shape(param)))})."
            )
