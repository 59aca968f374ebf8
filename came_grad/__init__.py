"""Multi-task gradient aggregation for optax: CAME-Grad and its baselines.

Every transformation takes a pytree of stacked per-task gradients (each leaf
with a leading task axis of size K) and returns one update shaped like the
parameters, so it composes in `optax.chain`. Each method except GradDrop is
a *weighting*, mapping the K x K Gram matrix of the task gradients to K
coefficients, made into a transformation by `from_weighting`.
"""

from came_grad._aggregation import AggregationState
from came_grad._aggregation import Diagnostics
from came_grad._aggregation import Weighting
from came_grad._aggregation import diagnostics
from came_grad._aggregation import from_weighting
from came_grad._aggregation import stateless_weighting
from came_grad._aligned_mtl import aligned_mtl
from came_grad._cagrad import cagrad
from came_grad._came import came_grad
from came_grad._came import came_grad_coefficients
from came_grad._config import config_aggregation
from came_grad._graddrop import GradDropState
from came_grad._graddrop import graddrop
from came_grad._gradvac import gradvac
from came_grad._gram import combine
from came_grad._gram import gram_matrix
from came_grad._imtl import imtl_g
from came_grad._linear import linear_scalarization
from came_grad._mgda import mgda
from came_grad._nash_mtl import nash_mtl
from came_grad._pcgrad import pcgrad
from came_grad._s1 import solve_dual
from came_grad._task_grads import value_and_task_grads
from came_grad._upgrad import dualproj
from came_grad._upgrad import upgrad

__version__ = "0.1.0"

__all__ = [
    "AggregationState",
    "Diagnostics",
    "GradDropState",
    "Weighting",
    "aligned_mtl",
    "cagrad",
    "came_grad",
    "came_grad_coefficients",
    "combine",
    "config_aggregation",
    "diagnostics",
    "dualproj",
    "from_weighting",
    "graddrop",
    "gradvac",
    "gram_matrix",
    "imtl_g",
    "linear_scalarization",
    "mgda",
    "nash_mtl",
    "pcgrad",
    "solve_dual",
    "stateless_weighting",
    "upgrad",
    "value_and_task_grads",
]
