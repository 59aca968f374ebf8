"""Tests of the report generation example's tokenizer and model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from came_grad.examples.rrg.model import ModelConfig, ReportModel
from came_grad.examples.rrg.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, clean_report

REPORTS = [
    "The heart is normal in size. The lungs are clear.",
    "Heart size is normal. No pleural effusion or pneumothorax.",
    "The lungs are clear. Mild cardiomegaly.",
]


def test_clean_report_normalizes_text():
    assert clean_report("The heart is NORMAL.  Lungs: clear..") == "the heart is normal . lungs clear ."
    assert clean_report("Right-sided effusion") == "right sided effusion ."
    assert clean_report(" .. ") == ""


def test_tokenizer_min_count_and_specials():
    tokenizer = Tokenizer.build(REPORTS, min_count=2)

    assert tokenizer.vocab[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert "lungs" in tokenizer.token_to_id
    assert "pneumothorax" not in tokenizer.token_to_id


def test_tokenizer_round_trip_and_truncation():
    tokenizer = Tokenizer.build(REPORTS, min_count=1)

    ids = tokenizer.encode(REPORTS[0], max_length=30)
    assert ids.shape == (30,)
    assert ids[0] == BOS_ID
    assert tokenizer.decode(ids) == clean_report(REPORTS[0])

    short = tokenizer.encode(REPORTS[0], max_length=5)
    assert short.tolist()[-1] == EOS_ID
    assert tokenizer.decode(short) == "the heart is"

    unknown = tokenizer.encode("zebra heart", max_length=6)
    assert unknown.tolist() == [BOS_ID, UNK_ID, tokenizer.token_to_id["heart"], tokenizer.token_to_id["."], EOS_ID, PAD_ID]


def test_tokenizer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="min_count"):
        Tokenizer.build(REPORTS, min_count=0)
    with pytest.raises(ValueError, match="max_length"):
        Tokenizer.build(REPORTS).encode("heart", max_length=2)
    with pytest.raises(ValueError, match="must start with"):
        Tokenizer(["heart", "<pad>"])


@pytest.fixture(params=["cnn", "vit"])
def model(request):
    config = ModelConfig(vocab_size=20, max_length=10, image_size=16, encoder=request.param, width=16, patch_size=4)
    return ReportModel(config, rngs=nnx.Rngs(0))


def test_model_output_shapes(model):
    images = jnp.zeros((3, 16, 16, 1))
    tokens = jnp.ones((3, 7), jnp.int32)

    token_logits, label_logits = model(images, tokens)

    assert token_logits.shape == (3, 7, 20)
    assert label_logits.shape == (3, 14)
    assert model.encode(images).shape == (3, model.config.num_visual_tokens, 16)


def test_model_losses_finite(model):
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((4, 16, 16, 1), dtype=np.float32))
    tokens = jnp.asarray(rng.integers(4, 20, (4, 10)), dtype=jnp.int32).at[:, 0].set(BOS_ID).at[:, -3:].set(PAD_ID)
    labels = jnp.asarray(rng.integers(0, 2, (4, 14)))

    for key in (None, jax.random.key(1)):
        losses = model.losses(images, tokens, labels, dropout_key=key)
        assert losses.shape == (2,)
        assert bool(jnp.all(jnp.isfinite(losses)))
        assert bool(jnp.all(losses > 0))


def test_model_rejects_wrong_image_shape(model):
    with pytest.raises(ValueError, match="images must have shape"):
        model.encode(jnp.zeros((2, 8, 8, 1)))


def test_generate_shape_under_jit(model):
    graphdef, state = nnx.split(model)
    generate = jax.jit(lambda state, images: nnx.merge(graphdef, state).generate(images))

    tokens = np.asarray(generate(state, jnp.zeros((2, 16, 16, 1))))

    assert tokens.shape == (2, 10)
    assert tokens.dtype == np.int32
    assert np.all(tokens[:, 0] == BOS_ID)
    for row in tokens:
        eos_positions = np.flatnonzero(row == EOS_ID)
        if eos_positions.size:
            assert np.all(row[eos_positions[0] + 1 :] == PAD_ID)


def test_generate_stops_after_eos(model):
    # A zero LayerNorm scale makes the decoder output equal to the norm bias,
    # and an <eos> embedding aligned with that bias makes <eos> the argmax.
    model.decoder_norm.scale[...] = jnp.zeros_like(model.decoder_norm.scale[...])
    model.decoder_norm.bias[...] = jnp.ones_like(model.decoder_norm.bias[...])
    model.token_embed.embedding[...] = model.token_embed.embedding[...].at[EOS_ID].set(10.0)

    tokens = np.asarray(model.generate(jnp.zeros((2, 16, 16, 1))))

    expected = [BOS_ID, EOS_ID] + [PAD_ID] * 8
    assert tokens.tolist() == [expected, expected]


def test_model_config_rejects_bad_values():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        ModelConfig(vocab_size=20, width=30, num_heads=4)
    with pytest.raises(ValueError, match="multiple of 8"):
        ModelConfig(vocab_size=20, image_size=20)
    with pytest.raises(ValueError, match="encoder"):
        ModelConfig(vocab_size=20, encoder="rnn")
