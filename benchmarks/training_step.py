"""Time one training step of the report generation model with and without gradient aggregation.

The model is the example's `ReportModel` at the main job's default size
(CNN encoder, width 128, two decoder layers, 32-pixel images, reports of 60
tokens, batches of 32). The inputs are random arrays of the right shapes,
because the step's cost does not depend on their values. The script times,
each as one jitted function:

* linear scalarization with one backward pass of the weighted loss
  `1 * L_report + 4 * L_class`, followed by AdamW;
* the two per-task gradients alone (`came_grad.value_and_task_grads`);
* the CAME-Grad aggregation alone, on gradients computed beforehand;
* the full CAME-Grad step: per-task gradients, aggregation, AdamW;
* linear scalarization through the per-task gradients (the same update as
  the first, computed the way the example's `ls` optimizer does).

It prints median step times, steps per second, the aggregation's share of
the CAME-Grad step, and the memory that XLA reports for each compiled step.

Usage:
  PYTHONPATH=. python benchmarks/training_step.py
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import came_grad
from came_grad.examples.rrg.model import NUM_OBSERVATIONS, ModelConfig, ReportModel
from came_grad.examples.rrg.tokenizer import BOS_ID, EOS_ID
from common import format_table, interleaved_medians, machine_line

TASK_WEIGHTS = (1.0, 4.0)


def make_batch(config: ModelConfig, batch_size: int, seed: int = 0):
    """Return random images, token ids and labels shaped like one training batch."""
    rng = np.random.default_rng(seed)
    images = rng.random((batch_size, config.image_size, config.image_size, 1), dtype=np.float32)
    tokens = rng.integers(EOS_ID + 2, config.vocab_size, size=(batch_size, config.max_length), dtype=np.int32)
    tokens[:, 0] = BOS_ID
    tokens[:, -1] = EOS_ID
    labels = rng.integers(0, 2, size=(batch_size, NUM_OBSERVATIONS)).astype(np.float32)
    return jnp.asarray(images), jnp.asarray(tokens), jnp.asarray(labels)


def compiled_bytes(function, *args) -> dict[str, int]:
    """Return XLA's argument, output and temporary sizes for the compiled `function(*args)`."""
    analysis = function.lower(*args).compile().memory_analysis()
    return {
        "arguments": analysis.argument_size_in_bytes,
        "outputs": analysis.output_size_in_bytes,
        "temp": analysis.temp_size_in_bytes,
    }


def build_steps(config: ModelConfig):
    """Build the jitted functions to time and their shared inputs."""
    model = ReportModel(config, rngs=nnx.Rngs(params=0))
    graphdef, params = nnx.split(model, nnx.Param)
    weights = jnp.asarray(TASK_WEIGHTS, jnp.float32)
    adamw = optax.adamw(1e-3, weight_decay=0.05)

    def task_losses(params, images, tokens, labels, key):
        return nnx.merge(graphdef, params).losses(images, tokens, labels, key)

    value_and_task_grads = came_grad.value_and_task_grads(task_losses)

    def make_aggregated_step(aggregator):
        tx = optax.chain(aggregator, adamw)

        @jax.jit
        def step(params, state, batch, key):
            losses, task_grads = value_and_task_grads(params, *batch, key)
            updates, state = tx.update(task_grads, state, params)
            return optax.apply_updates(params, updates), state, losses

        return step, tx.init(params)

    @jax.jit
    def ls_backward_step(params, state, batch, key):
        def weighted_loss(params):
            losses = task_losses(params, *batch, key)
            return jnp.sum(weights * losses), losses

        (_, losses), grads = jax.value_and_grad(weighted_loss, has_aux=True)(params)
        updates, state = adamw.update(grads, state, params)
        return optax.apply_updates(params, updates), state, losses

    @jax.jit
    def task_grads_only(params, state, batch, key):
        del state
        return value_and_task_grads(params, *batch, key)

    came_step, came_state = make_aggregated_step(came_grad.came_grad(task_weights=TASK_WEIGHTS))
    ls_task_step, ls_task_state = make_aggregated_step(came_grad.linear_scalarization(task_weights=TASK_WEIGHTS))
    came_aggregator = came_grad.came_grad(task_weights=TASK_WEIGHTS)
    aggregator_state = came_aggregator.init(params)

    @jax.jit
    def aggregation_only(params, state, task_grads, key):
        del state, key
        updates, _ = came_aggregator.update(task_grads, aggregator_state, params)
        return updates

    return {
        "params": params,
        "steps": {
            "LS, one backward pass + AdamW": (ls_backward_step, adamw.init(params)),
            "per-task gradients only (K = 2)": (task_grads_only, None),
            "CAME-Grad aggregation only": (aggregation_only, None),
            "CAME-Grad step (task grads + aggregation + AdamW)": (came_step, came_state),
            "LS via task grads + AdamW": (ls_task_step, ls_task_state),
        },
        "task_grads_only": task_grads_only,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=818, help="token vocabulary size of the model (818 for the main job at seed 0)")
    parser.add_argument("--image-size", type=int, default=32, help="image height and width in pixels")
    parser.add_argument("--batch-size", type=int, default=32, help="reports per step")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of interleaved timing")
    args = parser.parse_args()

    config = ModelConfig(vocab_size=args.vocab_size, image_size=args.image_size)
    built = build_steps(config)
    params = built["params"]
    batch = make_batch(config, args.batch_size)
    key = jax.random.key(0)
    _, task_grads = built["task_grads_only"](params, None, batch, key)

    functions, arguments = [], []
    for name, (step, state) in built["steps"].items():
        inputs = (params, state, task_grads if name == "CAME-Grad aggregation only" else batch, key)
        functions.append(lambda inputs=inputs, step=step: step(*inputs))
        arguments.append(inputs)

    print(machine_line())
    num_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    print(f"model parameters: {num_params:,} in {len(jax.tree_util.tree_leaves(params))} arrays")
    times = interleaved_medians(functions, (), rounds=args.rounds)

    rows = []
    for (name, (step, _)), inputs, milliseconds in zip(built["steps"].items(), arguments, times):
        memory = compiled_bytes(step, *inputs)
        rows.append(
            [
                name,
                f"{milliseconds:.2f}",
                f"{1e3 / milliseconds:.1f}",
                f"{(memory['arguments'] + memory['outputs'] + memory['temp']) / 2**20:.1f}",
                f"{memory['temp'] / 2**20:.1f}",
            ]
        )
    print(format_table(["computation", "median ms", "steps/s", "XLA peak MiB", "temp MiB"], rows))

    named = dict(zip(built["steps"], times))
    came = named["CAME-Grad step (task grads + aggregation + AdamW)"]
    print(
        f"aggregation alone / CAME-Grad step: {named['CAME-Grad aggregation only'] / came:.1%}; "
        f"CAME-Grad step - per-task gradients: {(came - named['per-task gradients only (K = 2)']) / came:.1%} of the step; "
        f"CAME-Grad step / LS backward step: {came / named['LS, one backward pass + AdamW']:.2f}x"
    )


if __name__ == "__main__":
    main()
