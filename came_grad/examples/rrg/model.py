"""Reference report generation model for the multi-task example (Flax NNX).

The model has two tasks that share one image encoder:

* report generation: a Transformer decoder with causal self-attention and
  cross-attention to the visual tokens, trained with token cross-entropy;
* multi-label classification of the 14 CheXpert observations from the
  mean-pooled visual tokens, trained with sigmoid binary cross-entropy.

The defaults are small so that a CPU trains the model in minutes.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from came_grad.examples.rrg.tokenizer import BOS_ID, EOS_ID, PAD_ID

NUM_OBSERVATIONS = 14


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of `ReportModel`.

    Attributes:
        vocab_size: Number of token ids, special tokens included.
        max_length: Report length in tokens, ``<bos>`` and ``<eos>`` included.
        image_size: Height and width of the square grayscale input, in pixels.
        encoder: ``"cnn"`` (strided convolutions) or ``"vit"`` (patch embedding
            followed by Transformer encoder layers).
        width: Feature size of visual and text tokens.
        num_heads: Attention heads per attention layer.
        num_decoder_layers: Transformer decoder layers.
        num_encoder_layers: Transformer encoder layers, used by ``"vit"`` only.
        patch_size: ViT patch size in pixels, used by ``"vit"`` only.
        mlp_ratio: Hidden size of each MLP block divided by ``width``.
        dropout_rate: Dropout rate after embeddings, attention and MLP blocks.
        num_labels: Number of classification outputs.
        pixel_mean: Mean pixel value subtracted from the images, usually the
            training-set mean.
        pixel_std: Pixel standard deviation the images are divided by.
    """

    vocab_size: int
    max_length: int = 60
    image_size: int = 64
    encoder: Literal["cnn", "vit"] = "cnn"
    width: int = 128
    num_heads: int = 4
    num_decoder_layers: int = 2
    num_encoder_layers: int = 2
    patch_size: int = 8
    mlp_ratio: int = 2
    dropout_rate: float = 0.1
    num_labels: int = NUM_OBSERVATIONS
    pixel_mean: float = 0.5
    pixel_std: float = 0.25

    def __post_init__(self):
        if self.vocab_size <= EOS_ID:
            raise ValueError(f"vocab_size must include the special tokens (> {EOS_ID}), got {self.vocab_size}")
        if self.max_length < 3:
            raise ValueError(f"max_length must be >= 3, got {self.max_length}")
        if self.encoder not in ("cnn", "vit"):
            raise ValueError(f"encoder must be 'cnn' or 'vit', got {self.encoder!r}")
        if self.width % self.num_heads:
            raise ValueError(f"width ({self.width}) must be divisible by num_heads ({self.num_heads})")
        if self.encoder == "cnn" and self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 for the CNN encoder, got {self.image_size}")
        if self.encoder == "vit" and self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if not self.pixel_std > 0:
            raise ValueError(f"pixel_std must be > 0, got {self.pixel_std}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")

    @property
    def num_visual_tokens(self) -> int:
        """Number of visual tokens the encoder produces per image."""
        if self.encoder == "cnn":
            return (self.image_size // 8) ** 2
        return (self.image_size // self.patch_size) ** 2


class _Mlp(nnx.Module):
    def __init__(self, width: int, hidden: int, dropout_rate: float, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(width, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, width, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate)

    def __call__(self, x, dropout_key):
        x = self.fc2(jax.nn.gelu(self.fc1(x)))
        return _dropout(self.dropout, x, dropout_key)


def _dropout(layer: nnx.Dropout, x, key):
    """Apply dropout with ``key``, or return ``x`` unchanged when ``key`` is None."""
    if key is None:
        return x
    return layer(x, deterministic=False, rngs=key)


def _split_key(key, num: int):
    """Split a dropout key into ``num`` keys, or return Nones for evaluation."""
    if key is None:
        return [None] * num
    return list(jax.random.split(key, num))


def _attention(config: ModelConfig, rngs: nnx.Rngs) -> nnx.MultiHeadAttention:
    return nnx.MultiHeadAttention(
        num_heads=config.num_heads,
        in_features=config.width,
        decode=False,
        keep_rngs=False,
        rngs=rngs,
    )


class _EncoderLayer(nnx.Module):
    """Pre-norm Transformer encoder layer, used by the ViT encoder."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(config.width, rngs=rngs)
        self.attention = _attention(config, rngs)
        self.norm2 = nnx.LayerNorm(config.width, rngs=rngs)
        self.mlp = _Mlp(config.width, config.width * config.mlp_ratio, config.dropout_rate, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout_rate)

    def __call__(self, x, dropout_key):
        attention_key, mlp_key = _split_key(dropout_key, 2)
        x = x + _dropout(self.dropout, self.attention(self.norm1(x)), attention_key)
        return x + self.mlp(self.norm2(x), mlp_key)


class _DecoderLayer(nnx.Module):
    """Pre-norm decoder layer: causal self-attention, cross-attention, MLP."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(config.width, rngs=rngs)
        self.self_attention = _attention(config, rngs)
        self.norm2 = nnx.LayerNorm(config.width, rngs=rngs)
        self.cross_attention = _attention(config, rngs)
        self.norm3 = nnx.LayerNorm(config.width, rngs=rngs)
        self.mlp = _Mlp(config.width, config.width * config.mlp_ratio, config.dropout_rate, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout_rate)

    def __call__(self, x, visual, causal_mask, dropout_key):
        self_key, cross_key, mlp_key = _split_key(dropout_key, 3)
        x = x + _dropout(self.dropout, self.self_attention(self.norm1(x), mask=causal_mask), self_key)
        x = x + _dropout(self.dropout, self.cross_attention(self.norm2(x), visual), cross_key)
        return x + self.mlp(self.norm3(x), mlp_key)


class CnnEncoder(nnx.Module):
    """Three stride-2 convolution stages that turn an image into an 8x downsampled token grid."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        channels = (config.width // 4, config.width // 2, config.width)
        in_channels = (1,) + channels[:-1]
        self.convs = nnx.List(
            [
                nnx.Conv(c_in, c_out, kernel_size=(3, 3), strides=(2, 2), rngs=rngs)
                for c_in, c_out in zip(in_channels, channels)
            ]
        )

    def __call__(self, images, dropout_key):
        del dropout_key
        # No per-pixel normalization between stages: a LayerNorm over the
        # channels of a pixel would remove the local brightness that
        # radiograph findings are drawn with. ReportModel normalizes the tokens.
        x = images
        for conv in self.convs:
            x = jax.nn.gelu(conv(x))
        return x.reshape(x.shape[0], -1, x.shape[-1])


class VitEncoder(nnx.Module):
    """Patch embedding followed by Transformer encoder layers."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        patch = (config.patch_size, config.patch_size)
        self.patch_embed = nnx.Conv(1, config.width, kernel_size=patch, strides=patch, padding="VALID", rngs=rngs)
        self.layers = nnx.List([_EncoderLayer(config, rngs=rngs) for _ in range(config.num_encoder_layers)])

    def __call__(self, images, dropout_key):
        x = self.patch_embed(images)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        for layer, key in zip(self.layers, _split_key(dropout_key, len(self.layers))):
            x = layer(x, key)
        return x


class ReportModel(nnx.Module):
    """Image encoder, report decoder and observation classifier.

    Args:
        config: Architecture.
        rngs: Random streams for parameter initialization. Dropout keys are
            passed to each call, so the model stores no random state and all
            its variables are `nnx.Param`.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        init = nnx.initializers.normal(0.02)

        if config.encoder == "cnn":
            self.encoder = CnnEncoder(config, rngs=rngs)
        else:
            self.encoder = VitEncoder(config, rngs=rngs)
        self.visual_position = nnx.Param(init(rngs.params(), (1, config.num_visual_tokens, config.width)))
        self.visual_norm = nnx.LayerNorm(config.width, rngs=rngs)

        self.token_embed = nnx.Embed(config.vocab_size, config.width, embedding_init=init, rngs=rngs)
        self.text_position = nnx.Param(init(rngs.params(), (1, config.max_length, config.width)))
        self.decoder_layers = nnx.List([_DecoderLayer(config, rngs=rngs) for _ in range(config.num_decoder_layers)])
        self.decoder_norm = nnx.LayerNorm(config.width, rngs=rngs)

        self.classifier_norm = nnx.LayerNorm(config.width, rngs=rngs)
        self.classifier = nnx.Linear(config.width, config.num_labels, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout_rate)

    def encode(self, images: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        """Encode ``[B, H, W, 1]`` images into ``[B, T, width]`` visual tokens."""
        expected = (self.config.image_size, self.config.image_size, 1)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"images must have shape [B, {', '.join(map(str, expected))}], got {images.shape}")

        encoder_key, dropout_key = _split_key(dropout_key, 2)
        # Standardized inputs train much faster than raw [0, 1] intensities.
        images = (images - self.config.pixel_mean) / self.config.pixel_std
        visual = self.encoder(images, encoder_key) + self.visual_position[...]
        return self.visual_norm(_dropout(self.dropout, visual, dropout_key))

    def classify(self, visual: jax.Array) -> jax.Array:
        """Return ``[B, num_labels]`` observation logits from visual tokens."""
        return self.classifier(self.classifier_norm(visual.mean(axis=1)))

    def decode_logits(
        self, visual: jax.Array, tokens: jax.Array, dropout_key: jax.Array | None = None
    ) -> jax.Array:
        """Return next-token logits ``[B, L, vocab_size]`` for input tokens ``[B, L]``.

        Position ``i`` of the output predicts token ``i + 1``. Causal masking
        makes the logits at a position independent of later tokens.
        """
        length = tokens.shape[1]
        if length > self.config.max_length:
            raise ValueError(f"tokens have length {length}, more than max_length {self.config.max_length}")

        embed_key, *layer_keys = _split_key(dropout_key, 1 + len(self.decoder_layers))
        x = self.token_embed(tokens) + self.text_position[:, :length]
        x = _dropout(self.dropout, x, embed_key)

        causal_mask = nnx.make_causal_mask(tokens)
        for layer, key in zip(self.decoder_layers, layer_keys):
            x = layer(x, visual, causal_mask, key)

        # The output projection reuses the token embedding matrix.
        return self.token_embed.attend(self.decoder_norm(x))

    def __call__(
        self, images: jax.Array, tokens: jax.Array, dropout_key: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Return next-token logits ``[B, L, V]`` and observation logits ``[B, num_labels]``."""
        encode_key, decode_key = _split_key(dropout_key, 2)
        visual = self.encode(images, encode_key)
        return self.decode_logits(visual, tokens, decode_key), self.classify(visual)

    def losses(
        self,
        images: jax.Array,
        tokens: jax.Array,
        labels: jax.Array,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """Compute the two task losses.

        Args:
            images: float32 ``[B, H, W, 1]``.
            tokens: int32 ``[B, max_length]`` encoded reports (``<bos>`` first).
            labels: ``[B, num_labels]`` binary observation targets (1 = positive).
            dropout_key: PRNG key that turns dropout on, or None for evaluation.

        Returns:
            float32 ``[2]``: the report generation loss (mean token cross-entropy
            over non-padding target tokens, ``<eos>`` included) and the
            classification loss (mean sigmoid binary cross-entropy).
        """
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        token_logits, label_logits = self(images, inputs, dropout_key)

        token_losses = optax.softmax_cross_entropy_with_integer_labels(token_logits, targets)
        weights = (targets != PAD_ID).astype(token_losses.dtype)
        report_loss = (token_losses * weights).sum() / jnp.maximum(weights.sum(), 1.0)

        label_loss = optax.sigmoid_binary_cross_entropy(label_logits, labels.astype(label_logits.dtype)).mean()
        return jnp.stack([report_loss, label_loss])

    def generate(self, images: jax.Array, max_length: int | None = None) -> jax.Array:
        """Write reports by greedy decoding.

        Every step recomputes the decoder over the whole fixed-length buffer
        without a key-value cache. That costs ``O(max_length^2)`` per report,
        which is cheap at this model size and keeps the loop jit-friendly.

        Args:
            images: float32 ``[B, H, W, 1]``.
            max_length: Output length, ``<bos>`` included; defaults to the
                configured ``max_length``.

        Returns:
            int32 ``[B, max_length]`` ids that start with ``<bos>``. After the
            first ``<eos>`` every position is ``<pad>``. A report that reaches
            ``max_length`` without ``<eos>`` ends there.
        """
        max_length = self.config.max_length if max_length is None else max_length
        if not 2 <= max_length <= self.config.max_length:
            raise ValueError(f"max_length must be in [2, {self.config.max_length}], got {max_length}")

        visual = self.encode(images)
        batch = images.shape[0]
        tokens = jnp.full((batch, max_length), PAD_ID, dtype=jnp.int32).at[:, 0].set(BOS_ID)
        finished = jnp.zeros((batch,), dtype=bool)

        def step(i, carry):
            tokens, finished = carry
            logits = self.decode_logits(visual, tokens)
            next_token = jnp.argmax(logits[:, i], axis=-1).astype(jnp.int32)
            next_token = jnp.where(finished, PAD_ID, next_token)
            tokens = tokens.at[:, i + 1].set(next_token)
            return tokens, finished | (next_token == EOS_ID)

        tokens, _ = jax.lax.fori_loop(0, max_length - 1, step, (tokens, finished))
        return tokens
