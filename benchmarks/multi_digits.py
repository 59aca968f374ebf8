"""Compare the aggregation methods on two-digit classification built from scikit-learn's 8x8 digits.

Each example is two 8x8 digits from `sklearn.datasets.load_digits` (bundled
with scikit-learn, no download) placed side by side on an 8x12 canvas. The
right digit starts 4 columns before the left one ends, and in the 4 shared
columns each pixel is the maximum of the two digits. Task 1 classifies
the left digit and task 2 the right one (10 classes each). The digits are
split 70/30 into training and test images before pairing, so no test digit
is seen during training.

The model is a shared two-layer ReLU MLP (96 -> 256 -> 128) with one linear
10-way head per task, in plain JAX. Every method trains with Adam
(learning rate 1e-3) on the aggregated direction for the same number of
steps, with the same initialization, pairs and batches for a given seed.

Usage:
  PYTHONPATH=. python benchmarks/multi_digits.py --seeds 3
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import came_grad
from common import METHODS, build_methods, format_table, machine_line

OVERLAP = 4
HIDDEN = (256, 128)


def make_pairs(images: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator):
    """Return `count` overlapped two-digit images `[count, 96]` and their labels `[count, 2]`."""
    left = rng.integers(0, len(images), count)
    right = rng.integers(0, len(images), count)
    width = 16 - OVERLAP
    canvas = np.zeros((count, 8, width), np.float32)
    canvas[:, :, :8] = images[left]
    canvas[:, :, width - 8 :] = np.maximum(canvas[:, :, width - 8 :], images[right])
    return canvas.reshape(count, -1), np.stack([labels[left], labels[right]], axis=1)


def make_data(seed: int, train_pairs: int, test_pairs: int):
    """Split the digits 70/30 and build training and test pairs from each part."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    cut = int(0.7 * len(images))
    train_index, test_index = order[:cut], order[cut:]
    train = make_pairs(images[train_index], digits.target[train_index], train_pairs, rng)
    test = make_pairs(images[test_index], digits.target[test_index], test_pairs, rng)
    return train, test


def init_params(key: jax.Array, input_size: int) -> dict:
    """Initialize the shared MLP and the two heads with He-normal weights."""
    sizes = (input_size, *HIDDEN)
    keys = jax.random.split(key, len(sizes) + 1)
    params = {}
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"shared_{index}"] = {
            "w": jax.random.normal(keys[index], (fan_in, fan_out)) * jnp.sqrt(2.0 / fan_in),
            "b": jnp.zeros((fan_out,)),
        }
    for task in range(2):
        params[f"head_{task}"] = {
            "w": jax.random.normal(keys[-1 - task], (sizes[-1], 10)) * jnp.sqrt(1.0 / sizes[-1]),
            "b": jnp.zeros((10,)),
        }
    return params


def logits(params: dict, inputs: jax.Array) -> jax.Array:
    """Return the two heads' logits, shape `[2, batch, 10]`."""
    features = inputs
    for index in range(len(HIDDEN)):
        layer = params[f"shared_{index}"]
        features = jax.nn.relu(features @ layer["w"] + layer["b"])
    return jnp.stack([features @ params[f"head_{task}"]["w"] + params[f"head_{task}"]["b"] for task in range(2)])


def task_losses(params: dict, inputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Return the mean cross-entropy of each task, shape `[2]`."""
    outputs = logits(params, inputs)
    return jnp.stack(
        [optax.softmax_cross_entropy_with_integer_labels(outputs[task], labels[:, task]).mean() for task in range(2)]
    )


def train(transformation, params, train_data, batches: np.ndarray, learning_rate: float):
    """Train with `transformation` chained with Adam and return the final parameters."""
    tx = optax.chain(transformation, optax.adam(learning_rate))
    value_and_task_grads = came_grad.value_and_task_grads(task_losses)
    inputs, labels = (jnp.asarray(array) for array in train_data)

    @jax.jit
    def run(params, batches):
        def step(carry, rows):
            params, state = carry
            _, task_grads = value_and_task_grads(params, inputs[rows], labels[rows])
            updates, state = tx.update(task_grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), batches)
        return params

    return run(params, jnp.asarray(batches))


def accuracy(params, test_data) -> np.ndarray:
    """Return the test accuracy of each task, shape `[2]`."""
    inputs, labels = test_data
    predictions = np.asarray(jnp.argmax(logits(params, jnp.asarray(inputs)), axis=-1)).T
    return (predictions == labels).mean(axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds")
    parser.add_argument("--steps", type=int, default=2000, help="Adam steps per run")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per step")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--train-pairs", type=int, default=20000, help="training examples")
    parser.add_argument("--test-pairs", type=int, default=5000, help="test examples")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="came_grad factory names")
    args = parser.parse_args()

    print(machine_line())
    accuracies = {}
    for seed in range(args.seeds):
        train_data, test_data = make_data(seed, args.train_pairs, args.test_pairs)
        rng = np.random.default_rng(seed + 1000)
        batches = rng.integers(0, args.train_pairs, (args.steps, args.batch_size))
        params = init_params(jax.random.key(seed), train_data[0].shape[1])
        for name, transformation in build_methods(2, seed=seed, names=args.methods).items():
            start = time.perf_counter()
            final = train(transformation, params, train_data, batches, args.learning_rate)
            accuracies.setdefault(name, []).append(accuracy(final, test_data))
            print(f"seed {seed} {name}: {accuracies[name][-1]} in {time.perf_counter() - start:.1f} s", flush=True)

    rows = []
    for name, values in accuracies.items():
        values = 100 * np.array(values)
        mean_both = values.mean(axis=1)
        rows.append(
            [
                name,
                f"{values[:, 0].mean():.2f} ± {values[:, 0].std():.2f}",
                f"{values[:, 1].mean():.2f} ± {values[:, 1].std():.2f}",
                f"{mean_both.mean():.2f} ± {mean_both.std():.2f}",
                len(values),
            ]
        )
    print(format_table(["method", "left digit acc %", "right digit acc %", "mean acc %", "seeds"], rows))


if __name__ == "__main__":
    main()
