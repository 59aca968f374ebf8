"""Accuracy tests for the conflict-averse dual solver against float64 references.

The solver runs in float32 and receives the float32-rounded Gram matrix, so
the references solve the same rounded matrix in float64 (cvxpy with CLARABEL).
Errors are measured on the scale `max_i |b_i| + r * sqrt(max_i G_ii)` of the
objective `f(a) = a^T b + r * sqrt(a^T G a)` with `b = G m`.
"""

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from came_grad import _s1

TASK_COUNTS = (2, 3, 4, 8, 16, 32)
KINDS = ("random", "ill_conditioned", "rank_deficient")
SEEDS = (0, 1, 2)
RADIUS_FACTORS = (0.1, 0.5, 1.0, 2.0)

# Accuracy when the optimum is clearly away from zero (|f*| >= 1e-3 * scale);
# the worst error measured there was below 1e-7.
REGULAR_TOLERANCE = 1e-6
# NOTE: when f* is near zero, the optimum is (close to) a point with
# ||h_a|| = 0, where f is not differentiable and float32 resolves a^T G a only
# to about 1e-7, so ||h_a|| only to about 3e-4. Errors up to 2.6e-4 * scale
# were measured there, so these cases only get this looser bound.
NEAR_ZERO_TOLERANCE = 1e-3

_solve = jax.jit(_s1.solve_dual)


def _task_gradients(num_tasks, kind, seed):
    """Return float64 task gradients (rows) scaled so that max_i ||h_i|| = 1."""
    rng = np.random.default_rng(1000 * num_tasks + 10 * KINDS.index(kind) + seed)
    dimension = int(rng.integers(num_tasks // 2 + 2, 3 * num_tasks + 3))
    gradients = rng.normal(size=(num_tasks, dimension))
    if kind == "ill_conditioned":
        # Task norms span four decades.
        gradients *= 10.0 ** rng.uniform(-4.0, 0.0, size=(num_tasks, 1))
    if kind == "rank_deficient":
        rank = max(1, num_tasks // 3)
        gradients = rng.normal(size=(num_tasks, rank)) @ rng.normal(size=(rank, dimension))
    return gradients / np.sqrt(np.max(np.sum(gradients**2, axis=1)))


def _problem(num_tasks, kind, seed, radius_factor):
    """Return (gradients, float32 Gram, float32 radius) for one case."""
    gradients = _task_gradients(num_tasks, kind, seed)
    gram = (gradients @ gradients.T).astype(np.float32)
    mean = np.full(num_tasks, 1.0 / num_tasks)
    radius = np.float32(radius_factor * np.sqrt(max(mean @ gram.astype(np.float64) @ mean, 0.0)))
    return gradients, gram, radius


def _objective(weights, gram, radius):
    """Evaluate the dual objective in float64."""
    mean = np.full(len(weights), 1.0 / len(weights))
    return weights @ gram @ mean + radius * np.sqrt(max(weights @ gram @ weights, 0.0))


def _objective_scale(gram, radius):
    mean = np.full(gram.shape[0], 1.0 / gram.shape[0])
    return np.max(np.abs(gram @ mean)) + radius * np.sqrt(np.max(np.diagonal(gram)))


def _reference_dual(gram, radius):
    """Return the float64 optimum value of the dual on the simplex."""
    num_tasks = gram.shape[0]
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    factor = eigenvectors * np.sqrt(np.maximum(eigenvalues, 0.0))
    weights = cp.Variable(num_tasks)
    mean_products = gram @ np.full(num_tasks, 1.0 / num_tasks)
    problem = cp.Problem(
        cp.Minimize(mean_products @ weights + radius * cp.norm(factor.T @ weights)),
        [weights >= 0, cp.sum(weights) == 1],
    )
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    # The solver's point, projected onto the simplex, is feasible, so its
    # objective is an upper bound that does not depend on solver tolerances.
    point = np.clip(np.asarray(weights.value), 0.0, None)
    return min(problem.value, _objective(point / point.sum(), gram, radius))


def _reference_primal(gradients, radius):
    """Return max over ||u - mu|| <= r of min_i <h_i, u>, in float64."""
    mean = gradients.mean(axis=0)
    direction = cp.Variable(gradients.shape[1])
    problem = cp.Problem(
        cp.Maximize(cp.min(gradients @ direction)),
        [cp.norm(direction - mean) <= radius],
    )
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return problem.value


def _assert_on_simplex(weights):
    assert np.all(np.isfinite(weights)), weights
    assert np.min(weights) >= 0.0, weights
    assert abs(np.sum(weights) - 1.0) < 1e-5, np.sum(weights)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
def test_dual_matches_float64_reference(num_tasks, kind):
    for seed in SEEDS:
        radius_factor = RADIUS_FACTORS[seed % len(RADIUS_FACTORS)]
        _, gram32, radius = _problem(num_tasks, kind, seed, radius_factor)
        weights = np.asarray(_solve(jnp.asarray(gram32), jnp.float32(radius)), np.float64)
        _assert_on_simplex(weights)

        gram = gram32.astype(np.float64)
        optimum = _reference_dual(gram, float(radius))
        scale = _objective_scale(gram, float(radius))
        error = (_objective(weights, gram, float(radius)) - optimum) / scale
        regular = abs(optimum) >= 1e-3 * scale
        tolerance = REGULAR_TOLERANCE if regular else NEAR_ZERO_TOLERANCE
        assert error <= tolerance, (seed, radius_factor, optimum, error)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
def test_direction_is_max_min_over_ball(num_tasks):
    for seed in SEEDS:
        radius_factor = RADIUS_FACTORS[seed % len(RADIUS_FACTORS)]
        gradients, gram32, radius = _problem(num_tasks, "random", seed, radius_factor)
        weights = np.asarray(_solve(jnp.asarray(gram32), jnp.float32(radius)), np.float64)

        combined = weights @ gradients
        combined_norm = np.linalg.norm(combined)
        if combined_norm < 1e-3:
            continue
        direction = gradients.mean(axis=0) + float(radius) * combined / combined_norm
        achieved = np.min(gradients @ direction)
        best = _reference_primal(gradients, float(radius))
        scale = _objective_scale(gradients @ gradients.T, float(radius))
        # Near a zero optimum only the objective is accurate, not the direction.
        if abs(best) < 1e-3 * scale:
            continue
        # The direction error is first order in the error of a, so it is looser
        # than the objective bound (1.02e-5 * scale measured for K = 8).
        assert best - achieved <= 3e-5 * scale, (seed, best, achieved)


@pytest.mark.parametrize("seed", range(8))
def test_two_task_closed_form(seed):
    rng = np.random.default_rng(seed)
    gradients = rng.normal(size=(2, 5)) * 10.0 ** rng.uniform(-2.0, 0.0, size=(2, 1))
    gram = gradients @ gradients.T
    gram32 = (gram / np.max(np.diagonal(gram))).astype(np.float32)
    radius = np.float32(RADIUS_FACTORS[seed % len(RADIUS_FACTORS)] * np.sqrt(gram32.astype(np.float64).mean()))

    weights = np.asarray(_s1._solve_two_tasks(jnp.asarray(gram32), jnp.float32(radius)), np.float64)
    _assert_on_simplex(weights)
    gram64 = gram32.astype(np.float64)
    optimum = _reference_dual(gram64, float(radius))
    scale = _objective_scale(gram64, float(radius))
    assert _objective(weights, gram64, float(radius)) - optimum <= REGULAR_TOLERANCE * scale


def _degenerate_cases():
    rng = np.random.default_rng(7)
    gradient = rng.normal(size=(1, 6))
    gradient /= np.linalg.norm(gradient)
    cases = {
        "single_task": (np.ones((1, 1)), 0.5),
        "zero_gram": (np.zeros((4, 4)), 0.0),
        "zero_gram_positive_radius": (np.zeros((4, 4)), 1.0),
        "zero_radius": (rng.normal(size=(5, 5)), 0.0),
        "identical_tasks": (np.repeat(gradient, 4, axis=0), 0.5),
        "opposite_tasks": (np.concatenate([gradient, -gradient]), 0.5),
        "opposite_tasks_three": (np.concatenate([gradient, -gradient, gradient]), 0.5),
    }
    params = []
    for name, (matrix, radius) in cases.items():
        if name == "zero_radius":
            matrix = matrix @ matrix.T
            matrix /= np.max(np.diagonal(matrix))
        elif not name.startswith(("zero", "single")):
            matrix = matrix @ matrix.T
        params.append(pytest.param(matrix.astype(np.float32), np.float32(radius), id=name))
    return params


@pytest.mark.parametrize("gram, radius", _degenerate_cases())
def test_degenerate_inputs_give_finite_weights(gram, radius):
    weights = np.asarray(jax.jit(_s1.solve_dual)(jnp.asarray(gram), jnp.float32(radius)), np.float64)
    _assert_on_simplex(weights)

    coefficients = np.asarray(_s1.conflict_averse_coefficients(jnp.asarray(gram), jnp.float32(0.5)))
    assert np.all(np.isfinite(coefficients)), coefficients
