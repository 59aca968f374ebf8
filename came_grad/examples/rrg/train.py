"""Training and evaluation loop of the report generation example.

One training step runs one forward pass that returns both task losses, takes
the per-task gradients with a vectorized backward pass
(`came_grad.value_and_task_grads`), aggregates them with the chosen
multi-task method and applies AdamW. The whole step is one `jax.jit` call.

Every optimizer gets the same parameter initialization, the same batch order
and the same dropout keys for a given seed, so differences in the results
come from the gradient aggregation alone.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

import came_grad
from came_grad.examples.rrg import metrics
from came_grad.examples.rrg.model import ModelConfig, ReportModel
from came_grad.examples.rrg.optimizers import DEFAULT_TASK_WEIGHTS, build_aggregator
from came_grad.examples.rrg.tokenizer import Tokenizer, clean_report

RESULT_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "ce_precision", "ce_recall", "ce_f1")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run.

    Attributes:
        steps: Optimizer steps.
        batch_size: Training reports per step.
        learning_rate: Peak AdamW learning rate.
        warmup_steps: Steps of linear warm-up from 0 to ``learning_rate``.
            Cosine decay to 1% of the peak follows until ``steps``.
        weight_decay: AdamW weight decay, applied to weight matrices,
            convolution kernels and embeddings, not to biases or norm scales.
        task_weights: Report generation and classification loss weights.
        seed: Seed of the initialization, batch order and dropout.
        min_count: Minimum training-set count of a word to enter the
            vocabulary.
        max_length: Report length in tokens, ``<bos>`` and ``<eos>``
            included. Longer training reports are truncated.
        encoder: ``"cnn"`` or ``"vit"``.
        width: Token feature size of the model.
        num_decoder_layers: Transformer decoder layers.
        dropout_rate: Dropout rate during training.
        eval_split: Held-out split to evaluate on, ``"test"`` or ``"val"``.
        eval_size: Evaluate on the first ``eval_size`` reports of
            ``eval_split``; None evaluates on all of them.
        eval_batch_size: Reports per greedy decoding call.
    """

    steps: int = 500
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.05
    task_weights: tuple[float, ...] = DEFAULT_TASK_WEIGHTS
    seed: int = 0
    min_count: int = 3
    max_length: int = 60
    encoder: Literal["cnn", "vit"] = "cnn"
    width: int = 128
    num_decoder_layers: int = 2
    dropout_rate: float = 0.1
    eval_split: Literal["test", "val"] = "test"
    eval_size: int | None = None
    eval_batch_size: int = 100

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_batch_size", "min_count"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(
                f"warmup_steps must be in [0, steps), got {self.warmup_steps} with steps={self.steps}"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.task_weights) != 2:
            raise ValueError(
                f"task_weights must hold 2 weights (report generation, classification), got {self.task_weights}"
            )
        if self.eval_split not in ("test", "val"):
            raise ValueError(f"eval_split must be 'test' or 'val', got {self.eval_split!r}")
        if self.eval_size is not None and self.eval_size < 1:
            raise ValueError(f"eval_size must be >= 1 or None, got {self.eval_size}")


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """Arrays shared by every optimizer's run.

    Attributes:
        tokenizer: Vocabulary built from the training reports.
        train_images: float32 ``[N, H, W, 1]``.
        train_tokens: int32 ``[N, max_length]``.
        train_labels: float32 ``[N, 14]`` binary observation targets.
        eval_images: float32 ``[M, H, W, 1]``.
        eval_reports: ``M`` cleaned reference reports.
        eval_labels: bool ``[M, 14]`` labeler positives of the references.
        batch_indices: int ``[steps, batch_size]`` training rows of each step.
    """

    tokenizer: Tokenizer
    train_images: np.ndarray
    train_tokens: np.ndarray
    train_labels: np.ndarray
    eval_images: np.ndarray
    eval_reports: list[str]
    eval_labels: np.ndarray
    batch_indices: np.ndarray


def batch_order(num_examples: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """Return the ``[steps, batch_size]`` row indices of every training step.

    Rows are drawn epoch by epoch from seeded permutations without
    replacement, and an epoch's remainder carries over into the next batch.
    """
    if num_examples < 1:
        raise ValueError("the training split is empty; load a dataset with at least one training report")

    rng = np.random.default_rng(seed)
    needed = steps * batch_size
    epochs = -(-needed // num_examples)
    order = np.concatenate([rng.permutation(num_examples) for _ in range(epochs)])
    return order[:needed].reshape(steps, batch_size)


def prepare_data(splits: Mapping[str, Any], config: TrainConfig) -> PreparedData:
    """Tokenize reports, binarize labels and fix the batch order.

    Args:
        splits: ``{"train": split, "val": split, "test": split}``, each with
            ``images`` ``[N, H, W, 1]``, ``reports`` and ``labels`` ``[N, 14]``
            from the rule-based labeler.
        config: Training settings.

    Returns:
        The arrays for `train_and_evaluate`.
    """
    from came_grad.examples.rrg.labeler import positive_labels

    for name in ("train", config.eval_split):
        if name not in splits:
            raise ValueError(f"splits lacks the {name!r} split; pass train, val and test splits")
    train, held_out = splits["train"], splits[config.eval_split]
    if len(held_out.reports) == 0:
        raise ValueError(f"the {config.eval_split!r} split is empty; load more reports or pick another eval_split")

    tokenizer = Tokenizer.build(train.reports, min_count=config.min_count)
    eval_size = len(held_out.reports) if config.eval_size is None else min(config.eval_size, len(held_out.reports))

    return PreparedData(
        tokenizer=tokenizer,
        train_images=np.asarray(train.images, dtype=np.float32),
        train_tokens=tokenizer.encode_batch(train.reports, config.max_length),
        train_labels=np.asarray(positive_labels(train.labels), dtype=np.float32),
        eval_images=np.asarray(held_out.images[:eval_size], dtype=np.float32),
        eval_reports=[clean_report(text) for text in held_out.reports[:eval_size]],
        eval_labels=np.asarray(positive_labels(held_out.labels[:eval_size]), dtype=bool),
        batch_indices=batch_order(len(train.reports), config.batch_size, config.steps, config.seed),
    )


def model_config(data: PreparedData, config: TrainConfig) -> ModelConfig:
    """Return the model architecture for the data and training settings."""
    return ModelConfig(
        vocab_size=data.tokenizer.vocab_size,
        max_length=config.max_length,
        image_size=data.train_images.shape[1],
        encoder=config.encoder,
        width=config.width,
        num_decoder_layers=config.num_decoder_layers,
        dropout_rate=config.dropout_rate,
        num_labels=data.train_labels.shape[1],
        pixel_mean=float(data.train_images.mean()),
        pixel_std=float(max(data.train_images.std(), 1e-6)),
    )


def make_optimizer(aggregator: optax.GradientTransformation, config: TrainConfig) -> optax.GradientTransformation:
    """Chain the task-gradient aggregator with AdamW and a warm-up cosine schedule."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=config.steps,
        end_value=config.learning_rate * 0.01,
    )

    def decay_mask(params):
        # Biases and LayerNorm scales are the only 1-D parameters.
        return jax.tree.map(lambda p: p.ndim >= 2, params)

    return optax.chain(
        aggregator,
        optax.adamw(learning_rate=schedule, b1=0.9, b2=0.999, weight_decay=config.weight_decay, mask=decay_mask),
    )


@functools.partial(jax.jit, static_argnums=0)
def _generate(graphdef, state, images):
    # graphdef is static, so runs with the same architecture share one compiled function.
    return nnx.merge(graphdef, state).generate(images)


def generate_reports(model: ReportModel, tokenizer: Tokenizer, images: np.ndarray, batch_size: int) -> list[str]:
    """Write a report for every image with jitted greedy decoding.

    The last batch is padded to ``batch_size`` so that one compiled function
    serves all batches.
    """
    graphdef, state = nnx.split(model)

    reports = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        count = len(batch)
        if count < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - count,) + batch.shape[1:], batch.dtype)])
        tokens = np.asarray(_generate(graphdef, state, batch))[:count]
        reports.extend(tokenizer.decode_batch(tokens))
    return reports


def evaluate(model: ReportModel, data: PreparedData, config: TrainConfig) -> dict[str, float]:
    """Generate reports for the held-out images and score them.

    Returns:
        BLEU-1..4, ROUGE-L and CE precision, recall and F1 (see `metrics`).
    """
    generated = generate_reports(model, data.tokenizer, data.eval_images, config.eval_batch_size)
    scores = metrics.nlg_scores(data.eval_reports, generated)
    scores.update(metrics.ce_scores(data.eval_labels, metrics.report_labels(generated)))
    return scores


def train_and_evaluate(
    optimizer: str, data: PreparedData, config: TrainConfig, progress: bool = True
) -> dict[str, Any]:
    """Train the reference model with one multi-task method and evaluate it.

    Args:
        optimizer: Aggregator name, a key of `optimizers.AGGREGATORS`.
        data: Output of `prepare_data` for ``config``.
        config: Training settings.
        progress: Show a tqdm progress bar with both losses and the ETA.

    Returns:
        The metrics of `RESULT_METRICS`, ``train_seconds`` (wall time of the
        training loop, jit compilation of the step included),
        ``eval_seconds``, and ``final_report_loss`` and
        ``final_classification_loss`` (unweighted training losses averaged
        over the last 10% of steps).
    """
    if data.batch_indices.shape != (config.steps, config.batch_size):
        raise ValueError(
            f"data was prepared for batch order {data.batch_indices.shape}, but config asks for "
            f"({config.steps}, {config.batch_size}); call prepare_data with this config"
        )

    aggregator, loss_scale = build_aggregator(optimizer, config.task_weights)
    tx = make_optimizer(aggregator, config)

    model = ReportModel(model_config(data, config), rngs=nnx.Rngs(params=config.seed))
    graphdef, params = nnx.split(model, nnx.Param)
    opt_state = tx.init(params)

    def task_losses(params, images, tokens, labels, dropout_key):
        model = nnx.merge(graphdef, params)
        return model.losses(images, tokens, labels, dropout_key) * loss_scale

    value_and_task_grads = came_grad.value_and_task_grads(task_losses)

    @jax.jit
    def train_step(params, opt_state, train_arrays, rows, step):
        images, tokens, labels = (array[rows] for array in train_arrays)
        dropout_key = jax.random.fold_in(base_key, step)
        losses, task_grads = value_and_task_grads(params, images, tokens, labels, dropout_key)
        updates, opt_state = tx.update(task_grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, losses / loss_scale

    # The training set lives on the device, so each step only sends row indices.
    train_arrays = tuple(jnp.asarray(array) for array in (data.train_images, data.train_tokens, data.train_labels))
    base_key = jax.random.key(config.seed + 1)

    history = []
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc=optimizer, unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        params, opt_state, losses = train_step(params, opt_state, train_arrays, data.batch_indices[step], step)
        history.append(losses)
        if progress and (step % 20 == 0 or step == config.steps - 1):
            report_loss, classification_loss = np.asarray(losses)
            bar.set_postfix(report=f"{report_loss:.3f}", cls=f"{classification_loss:.3f}", refresh=False)
    jax.block_until_ready(params)
    train_seconds = time.perf_counter() - start
    bar.close()

    last = np.asarray(jnp.stack(history[-max(1, config.steps // 10) :])).mean(axis=0)
    if not np.all(np.isfinite(last)):
        raise FloatingPointError(
            f"{optimizer}: training losses became non-finite ({last}); lower the learning rate"
        )

    nnx.update(model, params)
    start = time.perf_counter()
    scores = evaluate(model, data, config)
    eval_seconds = time.perf_counter() - start

    return {
        **scores,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "final_report_loss": float(last[0]),
        "final_classification_loss": float(last[1]),
    }


def baseline_scores(splits: Mapping[str, Any], data: PreparedData) -> dict[str, dict[str, float]]:
    """Score two image-blind baselines on the evaluation reports.

    ``most_common_report`` writes the most frequent cleaned training report
    for every image. ``majority_labels`` predicts each observation's majority
    training label (CE only), which is the all-negative prediction when no
    observation is positive in most training reports.
    """
    train_reports = [clean_report(text) for text in splits["train"].reports]
    values, counts = np.unique(np.asarray(train_reports, dtype=object), return_counts=True)
    common = str(values[np.argmax(counts)])
    common_reports = [common] * len(data.eval_reports)
    common_scores = metrics.nlg_scores(data.eval_reports, common_reports)
    common_scores.update(metrics.ce_scores(data.eval_labels, metrics.report_labels(common_reports)))

    majority = data.train_labels.mean(axis=0) > 0.5
    majority_scores = metrics.ce_scores(data.eval_labels, np.tile(majority, (len(data.eval_labels), 1)))
    return {"most_common_report": common_scores, "majority_labels": majority_scores}


def run_all(
    splits: Mapping[str, Any], optimizers: Sequence[str], config: TrainConfig, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Train and evaluate every optimizer on the same data, batches and initialization."""
    data = prepare_data(splits, config)
    return {name: train_and_evaluate(name, data, config, progress=progress) for name in optimizers}
