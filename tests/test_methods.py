"""One property suite over every aggregation method, plus values derived by hand from each definition."""

import dataclasses
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import came_grad

NUM_TASKS = 3
DIMENSION = 6


@dataclasses.dataclass(frozen=True)
class Method:
    """One method in the suite and the properties it promises."""

    name: str
    factory: object
    hyperparams: dict = dataclasses.field(default_factory=dict)
    non_conflicting: bool = False
    # PCGrad and GradVac draw a task order per task from the PRNG key, so
    # permuting the tasks changes which order each task gets.
    order_dependent: bool = False
    invalid: tuple = ()

    def build(self, num_tasks=NUM_TASKS, **overrides):
        return self.factory(**{**self.hyperparams, **overrides}, num_tasks=num_tasks)


METHODS = [
    Method("linear_scalarization", came_grad.linear_scalarization),
    Method(
        "came_grad",
        came_grad.came_grad,
        hyperparams={"rho": 1.0, "kappa": 1.5, "nu": 0.0},
        non_conflicting=True,
        invalid=(("rho", -0.5), ("kappa", 0.0), ("nu", 1.5)),
    ),
    # CAGrad maximizes the smallest inner product over a ball around the mean
    # gradient. With c >= 1 the ball contains 0, so that smallest product is >= 0.
    Method("cagrad", came_grad.cagrad, hyperparams={"c": 1.0}, non_conflicting=True, invalid=(("c", -0.5),)),
    Method("mgda", came_grad.mgda, non_conflicting=True),
    Method("pcgrad", came_grad.pcgrad, order_dependent=True),
    Method("imtl_g", came_grad.imtl_g),
    Method("aligned_mtl", came_grad.aligned_mtl),
    Method("upgrad", came_grad.upgrad, non_conflicting=True),
    Method("dualproj", came_grad.dualproj, non_conflicting=True),
    Method("nash_mtl", came_grad.nash_mtl),
    Method("config_aggregation", came_grad.config_aggregation),
    Method(
        "gradvac",
        came_grad.gradvac,
        hyperparams={"beta": 0.01},
        order_dependent=True,
        invalid=(("beta", -0.5), ("beta", 1.5)),
    ),
    Method("graddrop", came_grad.graddrop, hyperparams={"leak": 0.2}, invalid=(("leak", -0.5), ("leak", 1.5))),
]

ALL = pytest.mark.parametrize("method", METHODS, ids=lambda method: method.name)
SCALES = (0.0, 1e-30, 1e-10, 1.0, 1e10, 1e30)


def random_stack(seed=0, num_tasks=NUM_TASKS, dimension=DIMENSION):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(num_tasks, dimension)), jnp.float32)


def conflicting_stack():
    """Three gradients where the first two conflict and the third is orthogonal to both.

    Projecting or aligning the first two never changes their products with the
    third, so PCGrad and GradVac give the same result for every task order.
    """
    return jnp.array(
        [[1.0, 0.0, 0.0, 0.0], [-1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 1.5, 0.5]],
        jnp.float32,
    )


def rank_deficient_stacks():
    base = np.random.default_rng(1).normal(size=(2, DIMENSION))
    return {
        "sum": np.stack([base[0], base[1], base[0] + base[1]]),
        "duplicate": np.stack([base[0], base[0], base[1]]),
        "opposite": np.stack([base[0], -base[0], base[1]]),
        "one_zero": np.stack([base[0], np.zeros(DIMENSION), base[1]]),
    }


_JITTED = {}


def apply(method, grads):
    """Return the first update of `method` on `grads`, with one jitted transformation per method and K."""
    transform, update = jitted_transform(method, grads.shape[0])
    updates, _ = update(grads, transform.init(jnp.zeros(grads.shape[1:], grads.dtype)))
    return updates


def jitted_transform(method, num_tasks=NUM_TASKS):
    """Return `(transform, jitted update)`, built once per method and K to save compilations."""
    cache_key = (method.name, num_tasks)
    if cache_key not in _JITTED:
        transform = method.build(num_tasks=num_tasks)
        _JITTED[cache_key] = (transform, jax.jit(transform.update))
    return _JITTED[cache_key]


@ALL
@pytest.mark.parametrize("scale", SCALES)
def test_finite_for_every_scale(method, scale):
    updates = apply(method, random_stack() * scale)
    assert bool(jnp.all(jnp.isfinite(updates))), updates


@ALL
@pytest.mark.parametrize("stack", ["zero", "sum", "duplicate", "opposite", "one_zero"])
def test_finite_for_degenerate_stacks(method, stack):
    grads = jnp.zeros((NUM_TASKS, DIMENSION)) if stack == "zero" else jnp.asarray(rank_deficient_stacks()[stack], jnp.float32)
    updates = apply(method, grads)
    assert bool(jnp.all(jnp.isfinite(updates))), updates
    if stack == "zero":
        assert bool(jnp.all(updates == 0)), updates


@ALL
@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1e10, 1e30])
def test_update_scales_with_gradients(method, scale):
    # Every method here promises d(s g) = s d(g) for s > 0; the stochastic ones
    # draw the same orders or masks because the seed is the same.
    grads = random_stack()
    reference = np.asarray(apply(method, grads), np.float64)
    scaled = np.asarray(apply(method, grads * scale), np.float64) / scale
    np.testing.assert_allclose(scaled, reference, rtol=2e-4, atol=2e-5 * np.max(np.abs(reference)))


@ALL
def test_task_permutation(method):
    # PCGrad and GradVac get a stack on which the task order cannot matter
    # (see conflicting_stack). GradDrop draws one uniform per element shared
    # by all tasks, so its masks do not depend on the task order.
    grads = conflicting_stack() if method.order_dependent else random_stack(seed=2)
    permutation = jnp.array([2, 0, 1])
    np.testing.assert_allclose(apply(method, grads[permutation]), apply(method, grads), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
def test_random_order_mean_is_permutation_invariant(name):
    # On a generic stack the order matters, but the mean update over many
    # seeds is the same for permuted tasks.
    method = next(method for method in METHODS if method.name == name)
    grads = random_stack(seed=3)
    permutation = jnp.array([1, 2, 0])
    means = []
    for stack in (grads, grads[permutation]):
        transform = method.build()
        runs = jax.jit(jax.vmap(lambda seed_key: transform.update(stack, transform.init(jnp.zeros(DIMENSION))._replace(key=seed_key))[0]))
        keys = jax.vmap(lambda index: jax.random.key_data(jax.random.key(index)))(jnp.arange(1000))
        means.append(np.asarray(runs(keys).mean(axis=0)))
    np.testing.assert_allclose(means[0], means[1], atol=0.1)


@pytest.mark.parametrize("method", [method for method in METHODS if method.non_conflicting], ids=lambda method: method.name)
@pytest.mark.parametrize("seed", range(4))
def test_no_conflict_with_any_task(method, seed):
    grads = random_stack(seed=seed, num_tasks=4, dimension=5)
    updates = apply(method, grads)
    products = np.asarray(grads @ updates)
    tolerance = 1e-5 * float(jnp.max(jnp.sum(grads * grads, axis=1)))
    assert np.all(products >= -tolerance), products


@ALL
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_dtype_kept(method, dtype):
    updates = apply(method, random_stack().astype(dtype))
    assert updates.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(updates.astype(jnp.float32))))


def _shapes_and_dtypes(state):
    return jax.tree_util.tree_map(lambda leaf: (jnp.shape(leaf), jnp.asarray(leaf).dtype), state)


@ALL
def test_state_stable_under_jit(method):
    transform, update = jitted_transform(method)
    initial = transform.init(jnp.zeros(DIMENSION))
    state = initial
    for seed in range(3):
        _, state = update(random_stack(seed=seed), state)
    assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(initial)
    assert _shapes_and_dtypes(state) == _shapes_and_dtypes(initial)


@ALL
def test_jit_matches_eager(method):
    transform, update = jitted_transform(method)
    state = transform.init(jnp.zeros(DIMENSION))
    eager_state = jit_state = state
    for seed in range(2):
        grads = random_stack(seed=seed)
        eager, eager_state = transform.update(grads, eager_state)
        jitted, jit_state = update(grads, jit_state)
        np.testing.assert_allclose(jitted, eager, rtol=1e-4, atol=1e-5)


@ALL
def test_inject_hyperparams(method):
    # Integer arguments (K, the seed, CAGrad's rescale mode) would be injected as arrays, so they are static.
    parameters = inspect.signature(method.factory).parameters
    static_args = [name for name in ("num_tasks", "seed", "rescale") if name in parameters]
    injected = optax.inject_hyperparams(method.factory, static_args=static_args)(
        **method.hyperparams, num_tasks=NUM_TASKS
    )
    grads = random_stack(seed=4)
    injected_updates, state = jax.jit(injected.update)(grads, injected.init(jnp.zeros(DIMENSION)))
    plain_updates = apply(method, grads)
    np.testing.assert_allclose(injected_updates, plain_updates, rtol=1e-4, atol=1e-5)
    assert set(state.hyperparams) == set(method.hyperparams)


@pytest.mark.parametrize(
    "method, name, value",
    [(method, name, value) for method in METHODS for name, value in method.invalid],
    ids=lambda item: getattr(item, "name", str(item)),
)
def test_invalid_hyperparameter_rejected(method, name, value):
    with pytest.raises(ValueError, match=rf"{name} must be .*got {value}"):
        method.build(**{name: value})


@pytest.mark.parametrize("factory", [came_grad.gradvac, came_grad.nash_mtl])
def test_state_needs_num_tasks(factory):
    transform = factory()
    with pytest.raises(ValueError, match="num_tasks"):
        transform.init(jnp.zeros(DIMENSION))


# Values derived by hand from each method's definition.
#
# Stack A: g1 = (1, 0), g2 = (0, 2). G = [[1, 0], [0, 4]], no conflict.
# * linear: g1 + g2 = (1, 2).
# * MGDA, K = 2: x = (G22 - G12) / (G11 + G22 - 2 G12) = 4 / 5, so
#   d = 0.8 g1 + 0.2 g2 = (0.8, 0.4).
# * PCGrad and GradVac (targets start at 0, cosine 0 is not below 0): no
#   change, (1, 2).
# * IMTL-G: u1 = (1, 0), u2 = (0, 1). a1 + a2 = 1 and <d, u1> = <d, u2> give
#   a1 = 2 a2, so a = (2/3, 1/3) and d = (2/3, 2/3).
# * Aligned-MTL: eigenvalues 1 and 4 with eigenvectors e1, e2, so
#   B = sqrt(1) diag(1, 1/2) and d = H B 1 = g1 + g2 / 2 = (1, 1).
# * UPGrad and DualProj: each gradient and the mean (0.5, 1) are already in
#   the dual cone, so both give the mean (0.5, 1).
# * Nash-MTL: G / ||G||_F = diag(1, 4) / sqrt(17); a_i^2 G_ii / sqrt(17) = 1
#   gives a = (17^(1/4), 17^(1/4) / 2) and d = 17^(1/4) (1, 1).
# * ConFIG: the cosine matrix is I, so b = (1, 1), v = u1 + u2 = (1, 1),
#   e = (1, 1) / sqrt(2), and (<g1, e> + <g2, e>) e = 3 / sqrt(2) e = (1.5, 1.5).
# * CAGrad, c = 0.5, rescale = 1: mean g0 = (0.5, 1); the dual over the
#   segment a = (x, 1 - x) is f(x) = 0.5 x + 2 (1 - x) + r sqrt(x^2 + 4 (1 - x)^2),
#   r = 0.5 ||g0|| = sqrt(5) / 4. Its slope -1.5 + r (5x - 4) / sqrt(x^2 + 4 (1 - x)^2)
#   stays negative on [0, 1] (at x = 1 it is -1.5 + r < 0), so a = (1, 0), g_a = g1,
#   and d = g0 + r g1 = (0.5 + sqrt(5) / 4, 1), divided by 1 + c^2 = 1.25.
#
# Stack B: g1 = (1, 0), g2 = (-1, 1). <g1, g2> = -1, ||g2||^2 = 2.
# * PCGrad and GradVac (target 0): g1 -> g1 + g2 / 2 = (0.5, 0.5),
#   g2 -> g2 + g1 = (0, 1); sum (0.5, 1.5).
# * MGDA: x = (2 + 1) / (1 + 2 + 2) = 0.6, d = 0.6 g1 + 0.4 g2 = (0.2, 0.4).
# * DualProj: mean (0, 0.5) has products (0, 0.5) >= 0, so it stays.
# * UPGrad: g1 projected onto <v, g2> >= 0 is (0.5, 0.5) (products 0.5, 0);
#   g2 onto <v, g1> >= 0 is (0, 1) (products 0, 1); mean (0.25, 0.75).
# * IMTL-G: u1 = (1, 0), u2 = (-1, 1) / sqrt(2). With d = a1 g1 + a2 g2:
#   <d, u1> = a1 - a2, <d, u2> = (-a1 + 2 a2) / sqrt(2). Equal, with
#   a1 + a2 = 1: a1 (1 + 1/sqrt(2)) = a2 (1 + sqrt(2)) = a2 sqrt(2) (1 + 1/sqrt(2)),
#   so a1 = sqrt(2) a2, a2 = 1 / (1 + sqrt(2)), d = (a1 - a2, a2).
#
# Stack C, GradDrop: g1 = (1, 2, -1), g2 = (3, -2, -4). Purities (1, 0.5, 0):
# element 0 keeps both positives (4), element 2 keeps both negatives (-5);
# element 1 keeps 2 or -2 depending on the draw. With leak 1 nothing is masked.
STACK_A = [[1.0, 0.0], [0.0, 2.0]]
STACK_B = [[1.0, 0.0], [-1.0, 1.0]]
NASH_A = 17.0**0.25
CAGRAD_A = [(0.5 + math.sqrt(5.0) / 4.0) / 1.25, 1.0 / 1.25]
IMTL_B_SECOND = 1.0 / (1.0 + math.sqrt(2.0))
IMTL_B = [math.sqrt(2.0) * IMTL_B_SECOND - IMTL_B_SECOND, IMTL_B_SECOND]

PINNED = [
    ("linear_scalarization", came_grad.linear_scalarization, STACK_A, [1.0, 2.0]),
    ("mgda", came_grad.mgda, STACK_A, [0.8, 0.4]),
    ("pcgrad", came_grad.pcgrad, STACK_A, [1.0, 2.0]),
    ("gradvac", lambda: came_grad.gradvac(num_tasks=2), STACK_A, [1.0, 2.0]),
    ("imtl_g", came_grad.imtl_g, STACK_A, [2.0 / 3.0, 2.0 / 3.0]),
    ("aligned_mtl", came_grad.aligned_mtl, STACK_A, [1.0, 1.0]),
    ("upgrad", came_grad.upgrad, STACK_A, [0.5, 1.0]),
    ("dualproj", came_grad.dualproj, STACK_A, [0.5, 1.0]),
    ("nash_mtl", lambda: came_grad.nash_mtl(num_tasks=2), STACK_A, [NASH_A, NASH_A]),
    ("config_aggregation", came_grad.config_aggregation, STACK_A, [1.5, 1.5]),
    ("cagrad", lambda: came_grad.cagrad(c=0.5), STACK_A, CAGRAD_A),
    ("pcgrad_conflict", came_grad.pcgrad, STACK_B, [0.5, 1.5]),
    ("gradvac_conflict", lambda: came_grad.gradvac(num_tasks=2), STACK_B, [0.5, 1.5]),
    ("mgda_conflict", came_grad.mgda, STACK_B, [0.2, 0.4]),
    ("dualproj_conflict", came_grad.dualproj, STACK_B, [0.0, 0.5]),
    ("upgrad_conflict", came_grad.upgrad, STACK_B, [0.25, 0.75]),
    ("imtl_g_conflict", came_grad.imtl_g, STACK_B, IMTL_B),
]


@pytest.mark.parametrize("name, factory, stack, expected", PINNED, ids=[row[0] for row in PINNED])
def test_pinned_value(name, factory, stack, expected):
    transform = factory()
    updates, _ = transform.update(jnp.array(stack), transform.init(jnp.zeros(2)))
    np.testing.assert_allclose(updates, expected, rtol=1e-5, atol=1e-6)


def test_graddrop_pinned_values():
    grads = jnp.array([[1.0, 2.0, -1.0], [3.0, -2.0, -4.0]])
    transform = came_grad.graddrop()
    updates, _ = transform.update(grads, transform.init(jnp.zeros(3)))
    assert updates[0] == 4.0
    assert updates[2] == -5.0
    assert float(updates[1]) in (2.0, -2.0)

    leaky = came_grad.graddrop(leak=1.0)
    updates, _ = leaky.update(grads, leaky.init(jnp.zeros(3)))
    np.testing.assert_array_equal(updates, jnp.sum(grads, axis=0))


def test_mgda_matches_brute_force_for_four_tasks():
    # The minimum-norm point of the convex hull, checked against a dense grid
    # search over the simplex (a definition check independent of the solver).
    grads = np.asarray(random_stack(seed=5, num_tasks=4, dimension=3), np.float64)
    updates = np.asarray(apply(METHODS[3], jnp.asarray(grads, jnp.float32)), np.float64)
    steps = np.linspace(0.0, 1.0, 41)
    best = np.inf
    for a in steps:
        for b in steps[steps <= 1.0 - a + 1e-12]:
            for c in steps[steps <= 1.0 - a - b + 1e-12]:
                weights = np.array([a, b, c, max(1.0 - a - b - c, 0.0)])
                best = min(best, float(np.sum((weights @ grads) ** 2)))
    assert float(np.sum(updates**2)) <= best + 1e-6
