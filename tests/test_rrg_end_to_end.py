"""End-to-end runs of the report generation command on tiny offline data."""

import json
import math

import numpy as np
import pytest
from PIL import Image

import jax.numpy as jnp

from came_grad.examples.rrg import cli, iu_xray, optimizers

FINDINGS = [
    "The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
    "The heart is enlarged. There is a small left pleural effusion.",
    "Heart size is normal. There is a right lower lobe opacity concerning for pneumonia.",
    "Mild cardiomegaly. No focal consolidation. No pneumothorax.",
    "The lungs are clear. Calcified granuloma in the right upper lobe.",
    "Normal heart size. Left basilar atelectasis. No effusion.",
]
METRIC_KEYS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "ce_precision", "ce_recall", "ce_f1", "train_seconds")
TINY_RUN = ["--steps", "2", "--batch-size", "4", "--image-size", "16", "--eval-size", "4", "--no-progress"]


def _fixture_reports(count: int) -> list[iu_xray.Report]:
    return [
        iu_xray.Report(
            uid=f"CXR{i + 1}",
            findings=FINDINGS[i % len(FINDINGS)],
            impression="No acute disease." if i % 2 else "Cardiomegaly.",
            mesh_major=("normal",) if i % len(FINDINGS) in (0, 4) else ("Cardiomegaly/mild",),
            mesh_minor=(),
            image_ids=(f"CXR{i + 1}_1_IM-0001-1001",),
        )
        for i in range(count)
    ]


def _fixture_masks(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    left = ((yy - 0.5) / 0.35) ** 2 + ((xx - 0.3) / 0.15) ** 2 < 1
    right = ((yy - 0.5) / 0.35) ** 2 + ((xx - 0.7) / 0.15) ** 2 < 1
    return (left | right).astype(np.float32)[None]


def _check_results(out_dir, optimizers):
    results = json.loads((out_dir / "results.json").read_text())
    assert sorted(results) == sorted(optimizers)
    for name in optimizers:
        for key in METRIC_KEYS:
            assert key in results[name], f"{name} lacks {key}"
            assert math.isfinite(results[name][key]), f"{name} {key} = {results[name][key]}"
        for key in METRIC_KEYS[:-1]:
            assert 0.0 <= results[name][key] <= 1.0, f"{name} {key} = {results[name][key]}"
        assert results[name]["train_seconds"] > 0


def test_cli_r2gen_layout_all_optimizers(tmp_path):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    rng = np.random.default_rng(0)
    annotation = {}
    for split, count in (("train", 8), ("val", 2), ("test", 4)):
        records = []
        for i in range(count):
            name = f"{split}_{i}.png"
            Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(image_dir / name)
            records.append({"id": f"{split}{i}", "report": FINDINGS[i % len(FINDINGS)], "image_path": [name], "split": split})
        annotation[split] = records
    annotation_path = tmp_path / "annotation.json"
    annotation_path.write_text(json.dumps(annotation))
    out_dir = tmp_path / "out"

    status = cli.main(
        ["--data", "r2gen", "--annotation", str(annotation_path), "--image-dir", str(image_dir), "--out", str(out_dir)]
        + TINY_RUN
    )

    assert status == 0
    _check_results(out_dir, ["ls", "cagrad", "came"])
    assert (out_dir / "baselines.json").exists()
    assert not (out_dir / "labeler_agreement.json").exists()


def test_cli_rendered_data_offline(tmp_path, monkeypatch):
    reports = _fixture_reports(20)
    monkeypatch.setattr(iu_xray, "load_iu_xray_reports", lambda cache_dir=None: reports)
    monkeypatch.setattr(iu_xray, "load_lung_masks", lambda size, cache_dir=None: _fixture_masks(size))
    out_dir = tmp_path / "out"

    status = cli.main(["--optimizer", "came", "--out", str(out_dir), "--cache-dir", str(tmp_path / "cache")] + TINY_RUN)

    assert status == 0
    _check_results(out_dir, ["came"])
    agreement = json.loads((out_dir / "labeler_agreement.json").read_text())
    assert agreement[-1]["observation"] == "micro average"


@pytest.mark.parametrize("name", sorted(optimizers.AGGREGATORS))
def test_registry_method_update(name):
    transform, loss_scale = optimizers.build_aggregator(name)
    grads = {"w": jnp.array([[1.0, -2.0, 0.5], [-1.0, 1.0, 2.0]]), "b": jnp.array([0.3, -0.1])}
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}

    updates, _ = transform.update(grads, transform.init(params), params)

    assert updates["w"].shape == (3,)
    assert bool(jnp.all(jnp.isfinite(updates["w"])))
    assert loss_scale.shape == (2,)


def test_cli_weights_in_loss_method(tmp_path, monkeypatch):
    reports = _fixture_reports(20)
    monkeypatch.setattr(iu_xray, "load_iu_xray_reports", lambda cache_dir=None: reports)
    monkeypatch.setattr(iu_xray, "load_lung_masks", lambda size, cache_dir=None: _fixture_masks(size))
    out_dir = tmp_path / "out"

    status = cli.main(["--optimizer", "graddrop", "--out", str(out_dir), "--cache-dir", str(tmp_path / "cache")] + TINY_RUN)

    assert status == 0
    _check_results(out_dir, ["graddrop"])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--image-size", "20"], "--image-size must be a positive multiple of 8"),
        (["--data", "r2gen"], "--data r2gen needs --annotation and --image-dir"),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
        (["--learning-rate", "nan"], "--learning-rate must be a number > 0, got nan"),
    ],
)
def test_cli_rejects_invalid_options(arguments, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(arguments + ["--out", str(tmp_path)])

    assert raised.value.code == 2
    assert message in capsys.readouterr().err
