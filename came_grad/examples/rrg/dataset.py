"""Datasets for the radiology report generation example.

The embedded dataset pairs each real IU X-Ray report that has a FINDINGS
section (3,425 of 3,955) with a rendered radiograph drawn from the
labels of that FINDINGS text (see :mod:`render`). Images are synthetic,
so models trained on them learn the label-to-text mapping, not radiology.
Reports are split 7:1:2 into train, val and test by report with
:func:`iu_xray.split_by_report`.

Report text is cleaned by :func:`clean_report`: lowercased, the
de-identification token ``XXXX`` kept as the word ``xxxx``, and
punctuation other than ``.`` and ``,`` dropped, with both separated by
spaces so that whitespace splitting gives word tokens.

Offline use (tests, fixtures): pass already-parsed reports and masks, so
nothing is downloaded::

    reports = iu_xray.load_reports_from_dir("fixtures/xml")   # or a list of Report
    masks = np.ones((2, 32, 32), np.float32)                  # any [M, S, S] in [0, 1]
    splits = load_embedded_iu_xray(image_size=32, reports=reports, masks=masks)

``build_rrg_splits(reports, masks, seed)`` does the same without the
cache. Real images in the R2Gen layout load with
``load_rrg_dataset("path/to/annotation.json", image_dir=..., image_size=...)``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from came_grad.examples.rrg import iu_xray, labeler, render

logger = logging.getLogger(__name__)

RENDER_CACHE_VERSION = 1


@dataclasses.dataclass
class RRGSplit:
    """One split of an image-to-report dataset.

    Attributes:
        images: float32 ``[N, H, W, 1]`` in [0, 1].
        reports: Cleaned report texts, see :func:`clean_report`.
        labels: int8 ``[N, 14]`` labeler output for ``reports``
            (1 positive, 0 negative, -1 uncertain, -2 not mentioned).
        uids: Report ids, e.g. ``"CXR1"``.
    """

    images: np.ndarray
    reports: list[str]
    labels: np.ndarray
    uids: list[str]

    def __post_init__(self) -> None:
        count = len(self.reports)
        if self.images.ndim != 4 or self.images.shape[0] != count or self.images.shape[-1] != 1:
            raise ValueError(f"images must have shape [{count}, H, W, 1] to match {count} reports, got {self.images.shape}")
        if self.labels.shape != (count, labeler.NUM_OBSERVATIONS):
            raise ValueError(f"labels must have shape [{count}, {labeler.NUM_OBSERVATIONS}], got {self.labels.shape}")
        if len(self.uids) != count:
            raise ValueError(f"uids must have {count} entries to match the reports, got {len(self.uids)}")

    def __len__(self) -> int:
        return len(self.reports)


def clean_report(text: str) -> str:
    """Normalize report text for tokenization.

    Lowercases, keeps ``XXXX`` as ``xxxx``, drops characters other than
    letters, digits, ``.``, ``,``, ``-`` and ``/``, puts spaces around
    ``.`` and ``,`` (not inside numbers such as ``1.5``) and collapses
    whitespace. Example: ``"Heart size normal. No XXXX."`` becomes
    ``"heart size normal . no xxxx ."``.
    """
    text = text.lower()
    text = re.sub(r"[^a-z0-9.,/\- ]+", " ", text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " . ", text)
    text = re.sub(r",", " , ", text)
    text = re.sub(r"(?:\s*\.\s*)+\.", " .", text)
    return " ".join(text.split())


def _make_split(reports: Sequence[iu_xray.Report], images: np.ndarray, labels: np.ndarray, image_size: int) -> RRGSplit:
    return RRGSplit(
        images=images.reshape(len(reports), image_size, image_size, 1),
        reports=[clean_report(report.findings) for report in reports],
        labels=labels,
        uids=[report.uid for report in reports],
    )


def build_rrg_splits(
    reports: Sequence[iu_xray.Report],
    masks: np.ndarray,
    seed: int = 0,
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> dict[str, RRGSplit]:
    """Label, render and split reports without any download or cache.

    Args:
        reports: Reports; those with an empty FINDINGS section are dropped.
        masks: Lung masks ``[M, S, S]`` float32 in [0, 1]; ``S`` is the
            image size.
        seed: Seed of the rendering and of the split.
        images: Optional pre-rendered images ``[N, S, S]`` for the kept
            reports in their given order (used by the render cache).
        labels: Optional labeler output ``[N, 14]`` for the kept reports,
            to skip labeling again.

    Returns:
        ``{"train", "val", "test"}`` to :class:`RRGSplit`.

    Raises:
        ValueError: No report has findings, or ``masks`` is invalid.
    """
    masks = np.asarray(masks, np.float32)
    if masks.ndim != 3 or masks.shape[0] == 0 or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"masks must have shape [M, size, size] with M >= 1, got {masks.shape}")
    kept = [report for report in reports if report.findings.strip()]
    if not kept:
        raise ValueError(f"none of the {len(reports)} reports has a FINDINGS section; pass reports with findings")

    if labels is None:
        labels = labeler.label_reports(report.findings for report in kept)
    if images is None:
        keys = np.array([report.number for report in kept])
        images = render.render_radiographs(labels, masks, seed, keys)
    position = {report.uid: index for index, report in enumerate(kept)}

    image_size = masks.shape[1]
    splits = {}
    for name, members in iu_xray.split_by_report(kept, seed).items():
        rows = np.array([position[report.uid] for report in members], dtype=np.int64)
        splits[name] = _make_split(members, images[rows], labels[rows], image_size)
    return splits


def load_embedded_iu_xray(
    image_size: int = 64,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    reports: Sequence[iu_xray.Report] | None = None,
    masks: np.ndarray | None = None,
) -> dict[str, RRGSplit]:
    """Load IU X-Ray findings paired with rendered radiographs.

    Args:
        image_size: Image height and width in pixels, in [8, 1024].
        seed: Seed of the rendering and of the 7:1:2 split.
        cache_dir: Cache directory, see :func:`iu_xray.resolve_cache_dir`.
        limit: Keep only the first ``limit`` reports with findings (by
            numeric uid) before splitting, for quick runs. None keeps all.
        reports: Use these reports instead of downloading the IU X-Ray set.
        masks: Use these ``[M, S, S]`` masks instead of the downloaded
            lung masks; they are resized to ``image_size`` if ``S`` differs.

    Returns:
        ``{"train", "val", "test"}`` to :class:`RRGSplit`.

    Raises:
        ValueError: ``image_size`` or ``limit`` is invalid.
        RuntimeError: The download failed.
        ChecksumError: A downloaded file has an unexpected sha256.
    """
    image_size = iu_xray._check_size(image_size, "image_size")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 3):
        raise ValueError(f"limit must be None or an integer >= 3 (one report per split), got {limit!r}")

    offline = reports is not None or masks is not None
    if reports is None:
        reports = iu_xray.load_iu_xray_reports(cache_dir)
    if masks is None:
        masks = iu_xray.load_lung_masks(image_size, cache_dir)
    masks = _resize_masks(np.asarray(masks, np.float32), image_size)

    kept = [report for report in reports if report.findings.strip()]
    if limit is not None:
        kept = kept[:limit]

    # Only the full downloaded set is cached; limited or custom sets render in well under a second per 1,000 reports.
    if offline or limit is not None:
        return build_rrg_splits(kept, masks, seed)

    cache_path = iu_xray.resolve_cache_dir(cache_dir) / f"rendered_iu_xray_{image_size}_seed{seed}_v{RENDER_CACHE_VERSION}.npz"
    uids = np.array([report.uid for report in kept])
    labels = labeler.label_reports(report.findings for report in kept)
    if cache_path.exists():
        # The images depend on the labels, so a labeler change invalidates the cache.
        with np.load(cache_path) as cached:
            if np.array_equal(cached["uids"], uids) and "labels" in cached and np.array_equal(cached["labels"], labels):
                logger.info("reading cached rendered radiographs from %s", cache_path)
                return build_rrg_splits(kept, masks, seed, images=cached["images"], labels=labels)
        logger.warning("rendered cache %s does not match the reports or labels; rendering again", cache_path)

    start = time.perf_counter()
    images = render.render_radiographs(labels, masks, seed, np.array([report.number for report in kept]))
    logger.info("rendered %d radiographs at %dx%d in %.1f s", len(kept), image_size, image_size, time.perf_counter() - start)

    def write(path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez_compressed(handle, images=images, uids=uids, labels=labels)

    iu_xray._write_atomic(cache_path, write)
    return build_rrg_splits(kept, masks, seed, images=images, labels=labels)


def _resize_masks(masks: np.ndarray, image_size: int) -> np.ndarray:
    if masks.ndim != 3 or masks.shape[0] == 0:
        raise ValueError(f"masks must have shape [M, size, size] with M >= 1, got {masks.shape}")
    if masks.shape[1:] == (image_size, image_size):
        return masks
    from PIL import Image

    resized = [
        np.asarray(Image.fromarray(mask).resize((image_size, image_size), Image.Resampling.BILINEAR), np.float32)
        for mask in masks
    ]
    return np.clip(np.stack(resized), 0.0, 1.0)


def load_rrg_dataset(source: str = "iu_xray", **kwargs: Any) -> dict[str, RRGSplit]:
    """Load a dataset by name or annotation path.

    Args:
        source: ``"iu_xray"`` for :func:`load_embedded_iu_xray`, or the path
            of an R2Gen ``annotation.json`` for :func:`iu_xray.load_r2gen`
            (then pass ``image_dir`` and ``image_size``).
        **kwargs: Passed to the loader.

    Returns:
        ``{"train", "val", "test"}`` to :class:`RRGSplit`.

    Raises:
        ValueError: ``source`` is neither ``"iu_xray"`` nor a JSON file.
    """
    if source == "iu_xray":
        return load_embedded_iu_xray(**kwargs)
    if str(source).endswith(".json"):
        return iu_xray.load_r2gen(source, **kwargs)
    raise ValueError(f"unknown dataset source {source!r}; pass 'iu_xray' or the path of an R2Gen annotation.json")
