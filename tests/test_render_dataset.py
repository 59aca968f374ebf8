"""Tests for rendered radiographs and the embedded IU X-Ray dataset."""

import numpy as np
import pytest

from came_grad.examples.rrg import dataset, labeler, render
from came_grad.examples.rrg.iu_xray import Report

SIZE = 48


def lung_masks(size=SIZE):
    """Two simple lung masks: two vertical ellipses each."""
    coordinates = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(coordinates, coordinates, indexing="ij")
    masks = []
    for half_width in (0.14, 0.16):
        left = ((yy - 0.5) / 0.35) ** 2 + ((xx - 0.3) / half_width) ** 2 < 1
        right = ((yy - 0.5) / 0.35) ** 2 + ((xx - 0.7) / half_width) ** 2 < 1
        masks.append((left | right).astype(np.float32))
    return np.stack(masks)


def labels_with(*observations, value=labeler.POSITIVE):
    labels = np.full(14, labeler.NOT_MENTIONED, np.int8)
    labels[labeler.INDEX["No Finding"]] = labeler.POSITIVE if not observations else labeler.NEGATIVE
    for name in observations:
        labels[labeler.INDEX[name]] = value
    return labels


def test_render_deterministic_and_in_range():
    masks = lung_masks()
    labels = labels_with("Cardiomegaly", "Support Devices")
    first = render.render_radiograph(labels, masks, seed=0, key=7)
    second = render.render_radiograph(labels, masks, seed=0, key=7)
    other_key = render.render_radiograph(labels, masks, seed=0, key=8)
    assert first.dtype == np.float32
    assert first.shape == (SIZE, SIZE)
    assert first.min() >= 0.0
    assert first.max() <= 1.0
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other_key)


def test_render_cardiomegaly_enlarges_heart():
    masks = lung_masks()[:1]
    normal = render.render_radiograph(labels_with(), masks, seed=0, key=1)
    enlarged = render.render_radiograph(labels_with("Cardiomegaly"), masks, seed=0, key=1)
    bright = 0.45
    heart_band = slice(int(0.55 * SIZE), int(0.78 * SIZE))
    normal_width = (normal[heart_band] > bright).sum()
    enlarged_width = (enlarged[heart_band] > bright).sum()
    assert enlarged_width > 1.1 * normal_width
    beside_heart = (heart_band, slice(int(0.72 * SIZE), int(0.8 * SIZE)))
    assert enlarged[beside_heart].mean() > normal[beside_heart].mean() + 0.05


def test_render_effusion_brightens_base():
    masks = lung_masks()[:1]
    base = slice(int(0.72 * SIZE), int(0.84 * SIZE))
    apex = slice(int(0.2 * SIZE), int(0.35 * SIZE))
    normal = render.render_radiograph(labels_with(), masks, seed=0, key=2)
    effusion = render.render_radiograph(labels_with("Pleural Effusion"), masks, seed=0, key=2)
    assert effusion[base].mean() > normal[base].mean() + 0.02
    assert abs(effusion[apex].mean() - normal[apex].mean()) < 0.01


def test_render_uncertain_draws_half_contrast():
    masks = lung_masks()[:1]
    normal = render.render_radiograph(labels_with(), masks, seed=0, key=3)
    uncertain = render.render_radiograph(labels_with("Lung Lesion", value=labeler.UNCERTAIN), masks, seed=0, key=3)
    positive = render.render_radiograph(labels_with("Lung Lesion"), masks, seed=0, key=3)
    uncertain_change = np.abs(uncertain - normal).sum()
    positive_change = np.abs(positive - normal).sum()
    assert 0 < uncertain_change < positive_change


def test_render_radiographs_rejects_bad_shapes():
    with pytest.raises(ValueError, match="labels"):
        render.render_radiographs(np.zeros((2, 13), np.int8), lung_masks(), seed=0)
    with pytest.raises(ValueError, match="masks"):
        render.render_radiograph(labels_with(), np.zeros((0, SIZE, SIZE), np.float32), seed=0)


def test_clean_report():
    assert dataset.clean_report("Heart size normal.  No XXXX, 1.5 cm nodule!") == "heart size normal . no xxxx , 1.5 cm nodule"


FINDINGS = [
    "Mild cardiomegaly. No pleural effusion.",
    "The lungs are clear. Heart size is normal.",
    "Small left pleural effusion.",
    "Calcified granuloma in the right upper lobe.",
    "Left basilar atelectasis.",
    "No pneumothorax. XXXX pacemaker.",
    "",
    "Possible right lower lobe pneumonia.",
    "Normal chest.",
    "Stable sternotomy wires.",
    "Heart size upper limits of normal.",
    "No acute disease.",
]


def fixture_reports():
    return [
        Report(uid=f"CXR{index + 1}", findings=text, impression="", mesh_major=("normal",), mesh_minor=(), image_ids=())
        for index, text in enumerate(FINDINGS)
    ]


def test_embedded_dataset_offline(tmp_path):
    splits = dataset.load_embedded_iu_xray(image_size=32, seed=0, cache_dir=tmp_path, reports=fixture_reports(), masks=lung_masks())
    assert set(splits) == {"train", "val", "test"}
    total = sum(len(split) for split in splits.values())
    assert total == 11
    assert [len(splits[name]) for name in ("train", "val", "test")] == [8, 1, 2]
    uids = [uid for split in splits.values() for uid in split.uids]
    assert len(set(uids)) == 11
    assert "CXR7" not in uids
    assert list(tmp_path.iterdir()) == []

    train = splits["train"]
    assert train.images.shape == (8, 32, 32, 1)
    assert train.images.dtype == np.float32
    assert train.labels.dtype == np.int8
    for uid, report, labels in zip(train.uids, train.reports, train.labels):
        source = FINDINGS[int(uid[3:]) - 1]
        assert report == dataset.clean_report(source)
        np.testing.assert_array_equal(labels, labeler.label_report(source))


def test_embedded_dataset_deterministic_and_limited():
    first = dataset.build_rrg_splits(fixture_reports(), lung_masks(), seed=4)
    second = dataset.build_rrg_splits(fixture_reports(), lung_masks(), seed=4)
    for name in first:
        assert first[name].uids == second[name].uids
        np.testing.assert_array_equal(first[name].images, second[name].images)
    limited = dataset.load_embedded_iu_xray(image_size=SIZE, reports=fixture_reports(), masks=lung_masks(), limit=5)
    assert sum(len(split) for split in limited.values()) == 5
    with pytest.raises(ValueError, match="limit"):
        dataset.load_embedded_iu_xray(image_size=SIZE, reports=fixture_reports(), masks=lung_masks(), limit=0)


def test_rrg_split_validates_shapes():
    with pytest.raises(ValueError, match="images"):
        dataset.RRGSplit(images=np.zeros((2, 8, 8, 1), np.float32), reports=["a"], labels=np.zeros((1, 14), np.int8), uids=["CXR1"])
    with pytest.raises(ValueError, match="labels"):
        dataset.RRGSplit(images=np.zeros((1, 8, 8, 1), np.float32), reports=["a"], labels=np.zeros((1, 13), np.int8), uids=["CXR1"])


def test_load_rrg_dataset_rejects_unknown_source():
    with pytest.raises(ValueError, match="unknown dataset source"):
        dataset.load_rrg_dataset("mimic")
