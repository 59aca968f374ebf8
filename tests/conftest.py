"""Float64 reference implementations of CAME-Grad and CAGrad, shared by the tests.

The references work on a [K, n] float64 matrix of flattened task gradients.
They solve the S1 problem with general-purpose solvers (cvxpy with CLARABEL for
the primal, scipy SLSQP for the CAGrad dual) and share no code with the library.
"""

import cvxpy as cp
import numpy as np
import pytest
import scipy.optimize


def flatten_task_grads(task_grads) -> np.ndarray:
    """Concatenate the leaves of stacked task gradients into a [K, n] float64 matrix."""
    import jax

    leaves = jax.tree_util.tree_leaves(task_grads)
    rows = [np.asarray(leaf, np.float64).reshape(leaf.shape[0], -1) for leaf in leaves]
    return np.concatenate(rows, axis=1)


def solve_rectified_primal(weighted: np.ndarray, radius: float) -> np.ndarray:
    """Return the u in the ball ||u - mu|| <= radius that maximizes min_i <h_i, u>.

    Solved as the second-order cone program max t s.t. H u >= t, ||u - mu|| <= radius,
    after dividing the gradients by their largest norm so that CLARABEL works on
    numbers near 1.
    """
    num_tasks, size = weighted.shape
    largest = np.max(np.linalg.norm(weighted, axis=1))
    scaled = weighted / largest
    mean = scaled.mean(axis=0)
    if radius == 0:
        return mean * largest

    direction = cp.Variable(size)
    floor = cp.Variable()
    problem = cp.Problem(
        cp.Maximize(floor),
        [scaled @ direction >= floor, cp.norm(direction - mean, 2) <= radius / largest],
    )
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    assert problem.status == cp.OPTIMAL
    return np.asarray(direction.value) * largest


def solve_cagrad_dual(gram: np.ndarray, radius: float) -> np.ndarray:
    """Minimize a^T G m + radius * sqrt(a^T G a) over the simplex with SLSQP from the uniform point."""
    num_tasks = gram.shape[0]
    start = np.full(num_tasks, 1.0 / num_tasks)
    mean_products = gram @ start

    def objective(weights):
        return weights @ mean_products + radius * np.sqrt(max(weights @ gram @ weights, 0.0))

    result = scipy.optimize.minimize(
        objective,
        start,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * num_tasks,
        constraints=[{"type": "eq", "fun": lambda weights: 1.0 - np.sum(weights)}],
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    return result.x


def reference_came_grad(grads: np.ndarray, weights, rho: float, kappa: float, nu: float) -> np.ndarray:
    """CAME-Grad in float64, stage by stage, on a [K, n] matrix of task gradients."""
    grads = np.asarray(grads, np.float64)
    num_tasks = grads.shape[0]
    weights = np.ones(num_tasks) if weights is None else np.asarray(weights, np.float64)
    weighted = weights[:, None] * grads

    joint = weighted.sum(axis=0)
    mean = joint / num_tasks
    mean_norm = np.linalg.norm(mean)
    if mean_norm == 0:
        return nu * joint

    rectified = solve_rectified_primal(weighted, rho * mean_norm)
    enhanced = kappa * np.linalg.norm(joint) * rectified / np.linalg.norm(rectified)
    return (1.0 - nu) * enhanced + nu * joint


def reference_cagrad(grads: np.ndarray, c: float, rescale: int) -> np.ndarray:
    """CAGrad as in the official code (without its 1e-8 guards), on a [K, n] matrix."""
    grads = np.asarray(grads, np.float64)
    gram = grads @ grads.T
    mean = grads.mean(axis=0)
    radius = c * np.linalg.norm(mean)
    weights = solve_cagrad_dual(gram, radius)
    combined = weights @ grads
    direction = mean + radius * combined / np.linalg.norm(combined)
    if rescale == 0:
        return direction
    if rescale == 1:
        return direction / (1.0 + c**2)
    return direction / (1.0 + c)


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


@pytest.fixture
def came_reference():
    return reference_came_grad


@pytest.fixture
def cagrad_reference():
    return reference_cagrad


@pytest.fixture
def rectified_primal():
    return solve_rectified_primal


@pytest.fixture
def flatten():
    return flatten_task_grads
