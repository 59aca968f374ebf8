"""Multi-task gradient aggregation for optax: CAME-Grad and its baselines.

Every transformation takes a pytree of stacked per-task gradients (each leaf
with a leading task axis of size K) and returns one update shaped like the
parameters, so it composes in `optax.chain`. Each method is a *weighting*,
mapping the K x K Gram matrix of the task gradients to K coefficients, made
into a transformation by `from_weighting`.
"""

from came_grad._aggregation import AggregationState
from came_grad._aggregation import Diagnostics
from came_grad._aggregation import Weighting
from came_grad._aggregation import diagnostics
from came_grad._aggregation import from_weighting
from came_grad._cagrad import cagrad
from came_grad._came import came_grad
from came_grad._came import came_grad_coefficients
from came_grad._gram import combine
from came_grad._gram import gram_matrix
from came_grad._linear import linear_scalarization
from came_grad._s1 import solve_dual
from came_grad._task_grads import value_and_task_grads

__version__ = "0.1.0"

__all__ = [
    "AggregationState",
    "Diagnostics",
    "Weighting",
    "cagrad",
    "came_grad",
    "came_grad_coefficients",
    "combine",
    "diagnostics",
    "from_weighting",
    "gram_matrix",
    "linear_scalarization",
    "solve_dual",
    "value_and_task_grads",
]
