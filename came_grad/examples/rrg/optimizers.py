"""Registry of multi-task gradient aggregators compared in the example.

Each entry builds the gradient transformation that turns stacked per-task
gradients into one update direction. The training loop chains it with AdamW.

All methods optimize the same weighted objective, report loss weight 1 and
classification loss weight 4 by default. Every method here except
GradDrop takes the weights as its ``task_weights`` argument, which multiplies each task
gradient by its weight before aggregation. For a method without that
argument, set ``weights_in_loss``: the loss function then multiplies each
task loss by its weight before the per-task gradients are taken, which gives
the same weighted gradients.

The methods differ in overall scale (CAGrad averages the task gradients,
linear scalarization sums them). AdamW, which follows in the chain, is
invariant to a constant gradient scale up to its epsilon, so this does not
change the comparison.

To add a method, add one `Aggregator` to `AGGREGATORS`. `--optimizer all`
trains the three methods of `PAPER_COMPARISON`; `--optimizer family` trains
every entry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import optax

import came_grad

# Report generation loss weight, classification loss weight.
DEFAULT_TASK_WEIGHTS = (1.0, 4.0)


@dataclasses.dataclass(frozen=True)
class Aggregator:
    """A named multi-task gradient aggregation method.

    Attributes:
        name: Short name used on the command line and in results.
        title: Name for printed tables.
        make: Factory from task weights to the gradient transformation. It
            returns a transformation whose update maps stacked ``[K, ...]``
            task gradients to updates shaped like the parameters.
        weights_in_loss: True when ``make`` ignores the task weights, so the
            loss function must scale each task loss by its weight instead.
    """

    name: str
    title: str
    make: Callable[[tuple[float, ...]], optax.GradientTransformation]
    weights_in_loss: bool


def _weighted(title: str, name: str, factory: Callable[..., optax.GradientTransformation]) -> Aggregator:
    """Make an entry for a method that takes `task_weights`, from which it also takes K."""
    return Aggregator(name=name, title=title, make=lambda weights: factory(task_weights=weights), weights_in_loss=False)


AGGREGATORS: dict[str, Aggregator] = {
    aggregator.name: aggregator
    for aggregator in (
        Aggregator(
            name="ls",
            title="Linear scalarization",
            make=lambda weights: came_grad.linear_scalarization(task_weights=weights),
            weights_in_loss=False,
        ),
        Aggregator(
            name="cagrad",
            title="CAGrad",
            make=lambda weights: came_grad.cagrad(c=0.5, rescale=1, task_weights=weights),
            weights_in_loss=False,
        ),
        Aggregator(
            name="came",
            title="CAME-Grad",
            make=lambda weights: came_grad.came_grad(rho=0.5, kappa=1.5, nu=0.2, task_weights=weights),
            weights_in_loss=False,
        ),
        _weighted("MGDA", "mgda", came_grad.mgda),
        _weighted("PCGrad", "pcgrad", came_grad.pcgrad),
        _weighted("GradVac", "gradvac", came_grad.gradvac),
        _weighted("IMTL-G", "imtl_g", came_grad.imtl_g),
        _weighted("Aligned-MTL", "aligned_mtl", came_grad.aligned_mtl),
        _weighted("UPGrad", "upgrad", came_grad.upgrad),
        _weighted("DualProj", "dualproj", came_grad.dualproj),
        _weighted("Nash-MTL", "nash_mtl", came_grad.nash_mtl),
        _weighted("ConFIG", "config_aggregation", came_grad.config_aggregation),
        # GradDrop acts on the signs of the gradient elements, so it takes no
        # task weights: the loss function applies them instead.
        Aggregator(
            name="graddrop",
            title="GradDrop",
            make=lambda weights: came_grad.graddrop(num_tasks=len(weights)),
            weights_in_loss=True,
        ),
    )
}

# The methods that `--optimizer all` trains: CAME-Grad, the weighted sum it
# replaces, and CAGrad, whose ball problem is CAME-Grad's first stage.
PAPER_COMPARISON = ("ls", "cagrad", "came")


def get_aggregator(name: str) -> Aggregator:
    """Look up an aggregator by name, raising ValueError that lists the valid names."""
    try:
        return AGGREGATORS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(AGGREGATORS)}") from None


def build_aggregator(
    name: str, task_weights: Sequence[float] = DEFAULT_TASK_WEIGHTS
) -> tuple[optax.GradientTransformation, np.ndarray]:
    """Build an aggregator and the factors to multiply the task losses by.

    Args:
        name: A key of `AGGREGATORS`.
        task_weights: One positive weight per task.

    Returns:
        ``(transformation, loss_scale)``. ``loss_scale`` is a float32 ``[K]``
        array: the task weights when the method takes them through the loss,
        else ones.
    """
    weights = tuple(float(w) for w in task_weights)
    if not weights or any(not np.isfinite(w) or w <= 0 for w in weights):
        raise ValueError(f"task_weights must be finite and > 0, got {weights}")

    aggregator = get_aggregator(name)
    loss_scale = np.asarray(weights if aggregator.weights_in_loss else np.ones(len(weights)), dtype=np.float32)
    return aggregator.make(weights), loss_scale
