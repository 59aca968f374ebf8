"""Rendered frontal chest radiographs drawn from report labels.

A rendered radiograph is a synthetic image, not a real IU X-Ray image.
It starts from a real lung segmentation mask and adds soft tissue, ribs,
a spine and mediastinum and a heart shadow. Then it draws each finding
that the report's labels state: a larger heart for Cardiomegaly, a wider
mediastinum, a basal meniscus for Pleural Effusion, a patchy opacity for
Lung Opacity, Consolidation and Pneumonia, a small round opacity for
Lung Lesion, basal streaks for Atelectasis, perihilar haze for Edema, a
dark apical rim for Pneumothorax, pleural thickening for Pleural Other, a
rib gap for Fracture and a bright line with a generator for Support
Devices. Uncertain findings are drawn at half contrast.

Rendering is numpy only and deterministic: the mask choice, the side of
a finding and the noise come from ``numpy.random.default_rng([seed,
key])``, where ``key`` is usually the report's numeric id.

Intensities follow radiograph convention: bright (near 1) is dense
tissue or bone, dark (near 0) is air.
"""

from __future__ import annotations

import numpy as np

from came_grad.examples.rrg.labeler import INDEX, NUM_OBSERVATIONS, POSITIVE, UNCERTAIN


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, softness: float) -> np.ndarray:
    """Return a soft-edged ellipse in [0, 1] on the unit-square grid."""
    distance = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return np.clip((1.0 - distance) / softness, 0.0, 1.0)


def _gaussian(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, sigma_y: float, sigma_x: float) -> np.ndarray:
    return np.exp(-0.5 * (((yy - cy) / sigma_y) ** 2 + ((xx - cx) / sigma_x) ** 2))


def _finding_strengths(labels: np.ndarray) -> np.ndarray:
    """Map int8 labels to drawing strengths: 1 positive, 0.5 uncertain, else 0."""
    labels = np.asarray(labels)
    if labels.shape != (NUM_OBSERVATIONS,):
        raise ValueError(f"labels must have shape ({NUM_OBSERVATIONS},), got {labels.shape}; pass one row of label_reports()")
    return np.where(labels == POSITIVE, 1.0, np.where(labels == UNCERTAIN, 0.5, 0.0))


def render_radiograph(labels: np.ndarray, masks: np.ndarray, seed: int, key: int = 0) -> np.ndarray:
    """Render one frontal chest radiograph for a report's labels.

    Args:
        labels: int8 ``[14]`` labels from :func:`labeler.label_report`.
        masks: Lung masks ``[M, size, size]`` float32 in [0, 1], M >= 1.
        seed: Global seed.
        key: Per-report key, e.g. the numeric report id. The same
            ``(labels, masks, seed, key)`` always gives the same image.

    Returns:
        float32 ``[size, size]`` in [0, 1].

    Raises:
        ValueError: ``labels`` or ``masks`` has the wrong shape.
    """
    if masks.ndim != 3 or masks.shape[0] == 0 or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"masks must have shape [M, size, size] with M >= 1, got {masks.shape}; pass iu_xray.load_lung_masks(size)")
    strength = _finding_strengths(labels)
    rng = np.random.default_rng([int(seed), int(key)])
    size = masks.shape[1]

    coordinates = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(coordinates, coordinates, indexing="ij")
    lung = masks[rng.integers(masks.shape[0])].astype(np.float32)
    lung_clean = np.clip(lung, 0.0, 1.0)

    # Body: soft tissue ellipse on a dark background.
    image = 0.06 + 0.42 * _ellipse(yy, xx, 0.55, 0.5, 0.62, 0.52, 0.15)

    # Lungs are air-filled, so they are darker than soft tissue.
    image = image - 0.28 * lung_clean

    # Ribs: curved bands, visible mostly over the lungs. One rib can be
    # broken (Fracture) by cutting a short gap into its band.
    rib_phase = rng.uniform(0.0, 2.0 * np.pi)
    curve = yy * 9.0 * np.pi - 6.0 * (xx - 0.5) ** 2 * np.pi + rib_phase
    ribs = np.clip(np.cos(curve) * 2.0 - 0.8, 0.0, 1.0)
    if strength[INDEX["Fracture"]] > 0:
        side = rng.choice([0.27, 0.73])
        gap = _gaussian(yy, xx, rng.uniform(0.35, 0.6), side, 0.05, 0.025)
        ribs = ribs * (1.0 - strength[INDEX["Fracture"]] * np.clip(gap * 2.5, 0.0, 1.0))
    image = image + 0.1 * ribs * (0.3 + 0.7 * lung_clean)

    # Spine and mediastinum: a bright central band, wider when enlarged.
    mediastinum_width = 0.07 + 0.06 * strength[INDEX["Enlarged Cardiomediastinum"]]
    mediastinum = np.clip((mediastinum_width - np.abs(xx - 0.5)) / 0.02, 0.0, 1.0) * (yy > 0.12) * (yy < 0.75)
    image = image + 0.28 * mediastinum * (1.0 - 0.6 * lung_clean)

    # Heart: an ellipse left of center (patient's left is image right).
    heart_radius = 0.15 + 0.08 * strength[INDEX["Cardiomegaly"]]
    heart = _ellipse(yy, xx, 0.66, 0.56, 0.12 + 0.03 * strength[INDEX["Cardiomegaly"]], heart_radius, 0.25)
    image = image + 0.3 * heart

    # Pleural effusion: fluid fills one lung base up to a meniscus that
    # curves up toward the lateral chest wall.
    if strength[INDEX["Pleural Effusion"]] > 0:
        side = rng.choice([0.3, 0.7])
        level = rng.uniform(0.68, 0.78) - 0.35 * (xx - side) ** 2 * 8.0
        fluid = np.clip((yy - level) / 0.03, 0.0, 1.0) * (np.abs(xx - side) < 0.25)
        image = image + 0.35 * strength[INDEX["Pleural Effusion"]] * fluid * lung_clean

    # Patchy airspace opacity: a blob modulated by smooth noise.
    airspace = max(strength[INDEX["Consolidation"]], strength[INDEX["Pneumonia"]], strength[INDEX["Lung Opacity"]])
    if airspace > 0:
        cy, cx = rng.uniform(0.45, 0.7), rng.choice([0.3, 0.7])
        patches = 0.5 + 0.5 * np.sin(yy * rng.uniform(20, 35) + rng.uniform(0, 6)) * np.cos(xx * rng.uniform(20, 35))
        blob = _gaussian(yy, xx, cy, cx, 0.09, 0.08) * (0.5 + 0.5 * patches)
        image = image + 0.3 * airspace * blob * lung_clean

    # Lung lesion: a small round nodule.
    if strength[INDEX["Lung Lesion"]] > 0:
        cy, cx = rng.uniform(0.3, 0.6), rng.choice([rng.uniform(0.22, 0.35), rng.uniform(0.65, 0.78)])
        nodule = _ellipse(yy, xx, cy, cx, 0.035, 0.035, 0.4)
        image = image + 0.35 * strength[INDEX["Lung Lesion"]] * nodule

    # Atelectasis: thin plate-like streaks at a lung base.
    if strength[INDEX["Atelectasis"]] > 0:
        side = rng.choice([0.3, 0.7])
        tilt = rng.uniform(-0.15, 0.15)
        streaks = np.clip(1.0 - np.abs(np.sin((yy + tilt * xx) * 70.0)) * 3.0, 0.0, 1.0)
        region = _gaussian(yy, xx, 0.72, side, 0.06, 0.1)
        image = image + 0.25 * strength[INDEX["Atelectasis"]] * streaks * region * lung_clean

    # Edema: symmetric perihilar haze.
    if strength[INDEX["Edema"]] > 0:
        haze = _gaussian(yy, xx, 0.5, 0.37, 0.12, 0.08) + _gaussian(yy, xx, 0.5, 0.63, 0.12, 0.08)
        image = image + 0.2 * strength[INDEX["Edema"]] * haze * lung_clean

    # Pleural other: a bright band of thickening along the lateral wall.
    if strength[INDEX["Pleural Other"]] > 0:
        side = rng.choice([0.0, 1.0])
        edge = _gaussian(yy, xx, 0.35, abs(side - 0.16), 0.2, 0.025)
        image = image + 0.2 * strength[INDEX["Pleural Other"]] * edge

    # Pneumothorax: air without lung markings at one apex, which makes a
    # dark rim with a thin bright pleural line at its inner edge.
    if strength[INDEX["Pneumothorax"]] > 0:
        side = rng.choice([0.22, 0.78])
        rim = _ellipse(yy, xx, 0.22, side, 0.14, 0.1, 0.3) * lung_clean
        line = np.clip(1.0 - np.abs(_ellipse(yy, xx, 0.22, side, 0.14, 0.1, 1.0) - 0.3) * 15.0, 0.0, 1.0) * lung_clean
        image = image - 0.25 * strength[INDEX["Pneumothorax"]] * rim + 0.12 * strength[INDEX["Pneumothorax"]] * line

    # Support devices: a catheter line from the upper chest to the heart
    # and a generator box under the left clavicle.
    if strength[INDEX["Support Devices"]] > 0:
        start_x = rng.uniform(0.6, 0.75)
        path_x = start_x + (0.5 - start_x) * np.clip((yy - 0.15) / 0.45, 0.0, 1.0)
        catheter = np.clip(1.0 - np.abs(xx - path_x) * size / 1.2, 0.0, 1.0) * (yy > 0.15) * (yy < 0.6)
        generator = (np.abs(yy - 0.17) < 0.04) * (np.abs(xx - start_x - 0.06) < 0.06)
        image = image + 0.5 * strength[INDEX["Support Devices"]] * np.maximum(catheter, generator)

    image = image + rng.normal(0.0, 0.015, size=image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def render_radiographs(labels: np.ndarray, masks: np.ndarray, seed: int, keys: np.ndarray | None = None) -> np.ndarray:
    """Render one radiograph per label row.

    Args:
        labels: int8 ``[N, 14]`` labels.
        masks: Lung masks ``[M, size, size]``.
        seed: Global seed.
        keys: Per-report keys ``[N]`` (e.g. numeric report ids); defaults
            to ``arange(N)``.

    Returns:
        float32 ``[N, size, size]`` in [0, 1].

    Raises:
        ValueError: Shapes of ``labels``, ``keys`` or ``masks`` are invalid.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != NUM_OBSERVATIONS:
        raise ValueError(f"labels must have shape [N, {NUM_OBSERVATIONS}], got {labels.shape}; pass label_reports() output")
    keys = np.arange(len(labels)) if keys is None else np.asarray(keys)
    if keys.shape != (len(labels),):
        raise ValueError(f"keys must have shape ({len(labels)},), got {keys.shape}; pass one key per label row")
    size = masks.shape[-1]
    images = np.empty((len(labels), size, size), np.float32)
    for index in range(len(labels)):
        images[index] = render_radiograph(labels[index], masks, seed, int(keys[index]))
    return images
