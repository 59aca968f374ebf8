"""IU X-Ray reports, lung masks and the R2Gen annotation format.

The Indiana University Chest X-ray Collection reports (3,955 XML files,
licence CC BY-NC-ND 4.0) and about 500 lung segmentation masks of real
chest radiographs ship inside the ``torchxrayvision==1.5.7`` wheel. This
module downloads that wheel once with ``pip download`` (using the pip
index configured on the machine), checks its sha256 and the sha256 of
both data members, and reads the members straight out of the zip file.
torchxrayvision itself is never installed or imported.

Files live in a cache directory: the ``cache_dir`` argument, else the
``CAME_GRAD_CACHE`` environment variable, else ``~/.cache/came_grad``.
Parsed reports (JSON) and downsampled masks (``.npz`` per size) are
cached next to the wheel, so a second load takes well under a second.

Users with the real images can load the R2Gen layout instead: an
``annotation.json`` with ``train``, ``val`` and ``test`` lists of records
(``id``, ``report``, ``image_path``, ``split``) and an image folder, see
:func:`load_r2gen`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import zipfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence, TypeVar

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "torchxrayvision==1.5.7"
WHEEL_FILENAME = "torchxrayvision-1.5.7-py3-none-any.whl"
WHEEL_SHA256 = "95f6c3475661f3515d4258deb0855bd5d1b1a56e0b65384251d3dd3fa61fac41"
REPORTS_MEMBER = "torchxrayvision/data/NLMCXR_reports.tgz"
REPORTS_SHA256 = "8fb6de7eec73d8c3665067ad4bb003ccd57f971ae316d2642e1627ac7268667a"
MASKS_MEMBER = "torchxrayvision/data/semantic_masks_v7labs_lungs.zip"
MASKS_SHA256 = "4ec292d919c2524032855fb071d3c0842b1ab5344357aaadc036b42d3ea0ded8"
REPORTS_LICENSE = "CC BY-NC-ND 4.0"

# Bump when the parsed-report JSON or the mask .npz layout changes, so
# stale derived caches are rebuilt instead of read.
DERIVED_CACHE_VERSION = 1

# Masks whose lung area is outside this fraction of the image are empty
# or broken annotations (the set contains at least one all-black mask).
MIN_LUNG_FRACTION = 0.08
MAX_LUNG_FRACTION = 0.8

SPLIT_NAMES = ("train", "val", "test")

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

T = TypeVar("T")


class ChecksumError(RuntimeError):
    """Raised when a downloaded file or wheel member has an unexpected sha256."""


@dataclasses.dataclass(frozen=True)
class Report:
    """One IU X-Ray radiology report.

    Attributes:
        uid: Report id as in the XML ``uId`` element, e.g. ``"CXR1"``.
        findings: FINDINGS section text, ``""`` when absent. De-identified
            words are kept as ``XXXX``.
        impression: IMPRESSION section text, ``""`` when absent.
        mesh_major: Major MeSH terms, e.g. ``("Cardiomegaly/mild",)``.
        mesh_minor: Minor MeSH terms (empty in all 3,955 released reports).
        image_ids: ``parentImage`` ids, e.g. ``("CXR1_1_IM-0001-3001",)``.
        comparison: COMPARISON section text.
        indication: INDICATION section text.
    """

    uid: str
    findings: str
    impression: str
    mesh_major: tuple[str, ...]
    mesh_minor: tuple[str, ...]
    image_ids: tuple[str, ...]
    comparison: str = ""
    indication: str = ""

    @property
    def number(self) -> int:
        """Numeric part of ``uid`` (``"CXR12"`` -> 12), used for sorting."""
        return uid_number(self.uid)


def uid_number(uid: str) -> int:
    """Return the integer in a report id such as ``"CXR12"`` (-1 if none)."""
    match = re.search(r"\d+", uid)
    return int(match.group()) if match else -1


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cache directory and create it if needed.

    Args:
        cache_dir: Explicit directory. When None, ``$CAME_GRAD_CACHE`` is
            used, else ``~/.cache/came_grad``.

    Returns:
        The directory as an absolute path.
    """
    if cache_dir is None:
        cache_dir = os.environ.get("CAME_GRAD_CACHE") or Path.home() / ".cache" / "came_grad"
    path = Path(cache_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_bytes(data: bytes) -> str:
    """Return the hex sha256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Return the hex sha256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(actual: str, expected: str, name: str, cached_path: Path) -> None:
    """Raise ChecksumError unless ``actual`` equals ``expected``.

    Args:
        actual: Computed hex digest.
        expected: Expected hex digest.
        name: File or member name, used in the message.
        cached_path: Cached file to delete to recover.

    Raises:
        ChecksumError: The digests differ.
    """
    if actual != expected:
        raise ChecksumError(
            f"sha256 mismatch for {name}: expected {expected}, got {actual}. "
            f"The cached file may be corrupt or truncated: delete {cached_path} "
            "and run again to download it fresh."
        )
    logger.info("verified sha256 %s for %s", actual, name)


def fetch_torchxrayvision_wheel(
    cache_dir: str | os.PathLike | None = None,
    *,
    requirement: str | None = None,
    filename: str | None = None,
    expected_sha256: str | None = None,
) -> Path:
    """Download the torchxrayvision wheel into the cache unless present.

    The download runs ``python -m pip download --no-deps REQUIREMENT -d
    CACHE`` with the current interpreter, so pip uses the index that the
    machine's pip configuration names.

    Args:
        cache_dir: Cache directory, see :func:`resolve_cache_dir`.
        requirement: pip requirement to download; defaults to
            ``WHEEL_REQUIREMENT``.
        filename: Wheel file name that pip writes; defaults to
            ``WHEEL_FILENAME``.
        expected_sha256: Expected hex sha256 of the wheel; defaults to
            ``WHEEL_SHA256``.

    Returns:
        Path of the verified wheel.

    Raises:
        RuntimeError: pip failed or did not produce ``filename``.
        ChecksumError: The wheel has an unexpected sha256.
    """
    requirement = requirement or WHEEL_REQUIREMENT
    filename = filename or WHEEL_FILENAME
    expected_sha256 = expected_sha256 or WHEEL_SHA256
    directory = resolve_cache_dir(cache_dir)
    wheel_path = directory / filename

    if not wheel_path.exists():
        logger.info("downloading %s into %s with pip", requirement, directory)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", str(directory)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"pip download of {requirement} failed with exit code {result.returncode}: "
                f"{result.stderr.strip()[-2000:]}. Check network access to the pip index, "
                f"or place {filename} in {directory} by hand."
            )
        if not wheel_path.exists():
            raise RuntimeError(
                f"pip download of {requirement} did not write {wheel_path}. "
                f"Place {filename} in {directory} by hand."
            )
        logger.info("downloaded %s (%d bytes)", wheel_path, wheel_path.stat().st_size)

    check_sha256(sha256_file(wheel_path), expected_sha256, wheel_path.name, wheel_path)
    return wheel_path


def read_wheel_member(wheel_path: Path, member: str, expected_sha256: str) -> bytes:
    """Read one file out of a wheel and verify its sha256.

    Args:
        wheel_path: Wheel (zip) file.
        member: Path of the file inside the zip.
        expected_sha256: Expected hex sha256 of the member's bytes.

    Returns:
        The member's bytes.

    Raises:
        KeyError: ``member`` is not in the wheel.
        ChecksumError: The member has an unexpected sha256.
    """
    with zipfile.ZipFile(wheel_path) as archive:
        try:
            data = archive.read(member)
        except KeyError:
            raise KeyError(
                f"{member} not found in {wheel_path}; delete {wheel_path} and run again "
                "to download it fresh."
            ) from None
    check_sha256(sha256_bytes(data), expected_sha256, f"{wheel_path.name}:{member}", wheel_path)
    return data


def _section_text(element: ET.Element | None) -> str:
    if element is None:
        return ""
    return " ".join("".join(element.itertext()).split())


def parse_report_xml(source: bytes | str) -> Report:
    """Parse one IU X-Ray report XML document (``ecgen-radiology/N.xml``).

    Args:
        source: XML document as bytes or text.

    Returns:
        The parsed report. Section text has runs of whitespace collapsed.

    Raises:
        ValueError: The XML is malformed or has no ``uId`` element.
    """
    if isinstance(source, str):
        source = source.encode("utf-8")
    try:
        root = ET.fromstring(source)
    except ET.ParseError as error:
        raise ValueError(f"invalid report XML ({error}); pass the bytes of one ecgen-radiology/N.xml file") from error

    uid_element = root.find("uId")
    if uid_element is None or not uid_element.get("id"):
        raise ValueError("report XML has no <uId id=...> element; pass an IU X-Ray ecgen-radiology XML file")

    sections: dict[str, str] = {}
    for abstract_text in root.iter("AbstractText"):
        label = (abstract_text.get("Label") or "").upper()
        sections[label] = _section_text(abstract_text)

    mesh = root.find("MeSH")
    mesh_major: tuple[str, ...] = ()
    mesh_minor: tuple[str, ...] = ()
    if mesh is not None:
        mesh_major = tuple(_section_text(term) for term in mesh.findall("major") if _section_text(term))
        mesh_minor = tuple(_section_text(term) for term in mesh.findall("minor") if _section_text(term))

    image_ids = tuple(image.get("id", "") for image in root.findall("parentImage") if image.get("id"))

    return Report(
        uid=uid_element.get("id", ""),
        findings=sections.get("FINDINGS", ""),
        impression=sections.get("IMPRESSION", ""),
        mesh_major=mesh_major,
        mesh_minor=mesh_minor,
        image_ids=image_ids,
        comparison=sections.get("COMPARISON", ""),
        indication=sections.get("INDICATION", ""),
    )


def parse_reports_tgz(data: bytes) -> list[Report]:
    """Parse every ``*.xml`` file in a ``.tgz`` archive, sorted by numeric uid."""
    reports = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member in archive.getmembers():
            if not (member.isfile() and member.name.endswith(".xml")):
                continue
            handle = archive.extractfile(member)
            if handle is None:
                continue
            reports.append(parse_report_xml(handle.read()))
    reports.sort(key=lambda report: report.number)
    return reports


def load_reports_from_dir(xml_dir: str | os.PathLike) -> list[Report]:
    """Parse every ``*.xml`` report in a directory, sorted by numeric uid.

    This reads fixture or locally extracted reports without the network.

    Args:
        xml_dir: Directory with IU X-Ray report XML files.

    Returns:
        The parsed reports.

    Raises:
        ValueError: The directory does not exist or has no XML files.
    """
    directory = Path(xml_dir)
    if not directory.is_dir():
        raise ValueError(f"report directory {directory} does not exist; pass a folder of ecgen-radiology XML files")
    paths = sorted(directory.glob("*.xml"))
    if not paths:
        raise ValueError(f"no *.xml files in {directory}; pass a folder of ecgen-radiology XML files")
    reports = [parse_report_xml(path.read_bytes()) for path in paths]
    reports.sort(key=lambda report: report.number)
    return reports


def _report_to_json(report: Report) -> dict[str, Any]:
    return dataclasses.asdict(report)


def _report_from_json(record: dict[str, Any]) -> Report:
    for key in ("mesh_major", "mesh_minor", "image_ids"):
        record[key] = tuple(record[key])
    return Report(**record)


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    write(temporary)
    os.replace(temporary, path)


def load_iu_xray_reports(cache_dir: str | os.PathLike | None = None) -> list[Report]:
    """Load all 3,955 IU X-Ray reports, sorted by numeric uid.

    The first call downloads and verifies the torchxrayvision wheel and
    writes the parsed reports to ``iu_xray_reports_v{N}.json`` in the
    cache. Later calls read that JSON.

    Args:
        cache_dir: Cache directory, see :func:`resolve_cache_dir`.

    Returns:
        The reports, including those with an empty FINDINGS section.

    Raises:
        RuntimeError: The wheel download failed.
        ChecksumError: The wheel or the reports archive has an unexpected sha256.
    """
    directory = resolve_cache_dir(cache_dir)
    json_path = directory / f"iu_xray_reports_v{DERIVED_CACHE_VERSION}.json"

    if json_path.exists():
        logger.info("reading cached reports from %s", json_path)
        records = json.loads(json_path.read_text(encoding="utf-8"))
        return [_report_from_json(record) for record in records]

    wheel_path = fetch_torchxrayvision_wheel(directory)
    data = read_wheel_member(wheel_path, REPORTS_MEMBER, REPORTS_SHA256)
    reports = parse_reports_tgz(data)
    logger.info("parsed %d reports from %s", len(reports), REPORTS_MEMBER)

    payload = json.dumps([_report_to_json(report) for report in reports])
    _write_atomic(json_path, lambda path: path.write_text(payload, encoding="utf-8"))
    return reports


def _check_size(size: int, name: str = "size") -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= 1024:
        raise ValueError(f"{name} must be an integer in [8, 1024], got {size!r}; pass e.g. {name}=64")
    return int(size)


def decode_mask(data: bytes, size: int) -> np.ndarray:
    """Decode one mask image and resize it to ``[size, size]`` float32 in [0, 1].

    Non-square masks are stretched to a square. JPEG files are decoded at a
    reduced scale first (PIL draft mode) because the full decode of a
    2000x2000 image dominates the load time.
    """
    image = Image.open(io.BytesIO(data))
    if image.format == "JPEG":
        image.draft("L", (2 * size, 2 * size))
    image = image.convert("L").resize((size, size), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32) / 255.0


def decode_masks_zip(data: bytes, size: int) -> tuple[np.ndarray, list[str]]:
    """Decode all valid masks in a zip archive.

    Args:
        data: Bytes of the masks zip file.
        size: Output height and width.

    Returns:
        Masks ``[M, size, size]`` float32 in [0, 1] and their member names,
        sorted by name. Masks whose lung area (pixels above 0.5) is outside
        ``[MIN_LUNG_FRACTION, MAX_LUNG_FRACTION]`` are skipped.
    """
    masks, names = [], []
    skipped = 0
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for name in sorted(archive.namelist()):
            if not name.lower().endswith(_IMAGE_SUFFIXES):
                continue
            mask = decode_mask(archive.read(name), size)
            lung_fraction = float((mask > 0.5).mean())
            if not MIN_LUNG_FRACTION <= lung_fraction <= MAX_LUNG_FRACTION:
                logger.debug("skipping mask %s with lung fraction %.3f", name, lung_fraction)
                skipped += 1
                continue
            masks.append(mask)
            names.append(name)
    if skipped:
        logger.info(
            "skipped %d masks whose lung area is outside [%.2f, %.2f] of the image; kept %d",
            skipped, MIN_LUNG_FRACTION, MAX_LUNG_FRACTION, len(masks),
        )
    if not masks:
        return np.zeros((0, size, size), np.float32), names
    return np.stack(masks), names


def load_lung_masks(size: int, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Load the v7labs lung segmentation masks, downsampled to ``size``.

    The first call per size decodes the masks out of the verified wheel
    and writes ``lung_masks_{size}_v{N}.npz`` to the cache.

    Args:
        size: Output height and width in pixels, in [8, 1024].
        cache_dir: Cache directory, see :func:`resolve_cache_dir`.

    Returns:
        Masks ``[M, size, size]`` float32 in [0, 1] (lungs near 1, some
        lesions grey), sorted by file name.

    Raises:
        ValueError: ``size`` is invalid.
        RuntimeError: The wheel download failed.
        ChecksumError: The wheel or the masks archive has an unexpected sha256.
    """
    size = _check_size(size)
    directory = resolve_cache_dir(cache_dir)
    npz_path = directory / f"lung_masks_{size}_v{DERIVED_CACHE_VERSION}.npz"

    if npz_path.exists():
        logger.info("reading cached masks from %s", npz_path)
        with np.load(npz_path) as cached:
            return cached["masks"]

    wheel_path = fetch_torchxrayvision_wheel(directory)
    data = read_wheel_member(wheel_path, MASKS_MEMBER, MASKS_SHA256)
    masks, names = decode_masks_zip(data, size)
    logger.info("decoded %d lung masks at %dx%d", len(masks), size, size)

    def write(path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez_compressed(handle, masks=masks, names=np.array(names))

    _write_atomic(npz_path, write)
    return masks


def split_by_report(
    items: Sequence[T],
    seed: int,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    key: Callable[[T], Hashable] | None = None,
) -> dict[str, list[T]]:
    """Split items into train, val and test so that no report spans two splits.

    Distinct keys are sorted, shuffled with ``numpy.random.default_rng(seed)``
    and cut at ``round(n * fractions[0])`` and ``round(n * (fractions[0] +
    fractions[1]))``. The result depends only on the set of keys and the
    seed, not on the order of ``items``.

    Args:
        items: Items to split, e.g. reports or ``(report, image)`` pairs.
        seed: Seed of the shuffle.
        fractions: Train, val and test fractions. They must be non-negative
            and sum to 1.
        key: Function mapping an item to its report id. Items with the same
            key land in the same split. Defaults to the item's ``uid``
            attribute if it has one, else the item itself.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` with items in
        their original relative order.

    Raises:
        ValueError: ``fractions`` is invalid.
    """
    if len(fractions) != 3 or any(fraction < 0 for fraction in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"fractions must be three non-negative numbers that sum to 1, got {fractions!r}; "
            "pass e.g. fractions=(0.7, 0.1, 0.2)"
        )

    if key is None:
        def key(item: T) -> Hashable:
            return getattr(item, "uid", item)

    item_keys = [key(item) for item in items]
    unique_keys = sorted(set(item_keys), key=repr)
    order = np.random.default_rng(seed).permutation(len(unique_keys))
    shuffled = [unique_keys[index] for index in order]

    count = len(shuffled)
    train_end = int(round(count * fractions[0]))
    val_end = int(round(count * (fractions[0] + fractions[1])))
    assignment = {}
    for position, item_key in enumerate(shuffled):
        if position < train_end:
            assignment[item_key] = 0
        elif position < val_end:
            assignment[item_key] = 1
        else:
            assignment[item_key] = 2

    splits: dict[str, list[T]] = {name: [] for name in SPLIT_NAMES}
    for item, item_key in zip(items, item_keys):
        splits[SPLIT_NAMES[assignment[item_key]]].append(item)
    return splits


def load_image(path: Path, image_size: int) -> np.ndarray:
    """Load an image as grayscale ``[image_size, image_size]`` float32 in [0, 1]."""
    with Image.open(path) as image:
        image = image.convert("L").resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.float32) / 255.0


def load_r2gen(
    annotation_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    image_size: int,
) -> dict[str, Any]:
    """Load IU X-Ray in the R2Gen layout with real images.

    ``annotation.json`` contains ``{"train": [...], "val": [...], "test":
    [...]}``, each record with ``id``, ``report``, ``image_path`` (a list
    of paths relative to ``image_dir``) and ``split``. Only the first
    image of each record is used; in the R2Gen release it is the frontal
    view. Labels come from :mod:`came_grad.examples.rrg.labeler` applied
    to the report text.

    Args:
        annotation_path: Path of ``annotation.json``.
        image_dir: Folder that the ``image_path`` entries are relative to.
        image_size: Output height and width in pixels, in [8, 1024].

    Returns:
        ``{"train": RRGSplit, "val": RRGSplit, "test": RRGSplit}`` with
        images ``[N, image_size, image_size, 1]``.

    Raises:
        ValueError: A path, key, record or ``image_size`` is invalid.
    """
    # Imported here because dataset.py imports this module.
    from came_grad.examples.rrg.dataset import RRGSplit, clean_report
    from came_grad.examples.rrg.labeler import label_reports

    image_size = _check_size(image_size, "image_size")
    annotation_path = Path(annotation_path)
    image_dir = Path(image_dir)
    if not annotation_path.is_file():
        raise ValueError(f"annotation file {annotation_path} not found; pass the path of R2Gen's annotation.json")
    if not image_dir.is_dir():
        raise ValueError(f"image folder {image_dir} not found; pass the folder that image_path entries are relative to")

    annotation = json.loads(annotation_path.read_text(encoding="utf-8"))
    missing = [name for name in SPLIT_NAMES if name not in annotation]
    if missing:
        raise ValueError(
            f"{annotation_path} lacks the split lists {missing}; "
            "expected keys 'train', 'val' and 'test' as in R2Gen's annotation.json"
        )

    splits = {}
    for name in SPLIT_NAMES:
        images, reports, uids = [], [], []
        for index, record in enumerate(annotation[name]):
            image_paths = record.get("image_path") if isinstance(record, dict) else None
            if not image_paths or "report" not in record or "id" not in record:
                raise ValueError(
                    f"record {index} of split {name!r} in {annotation_path} needs 'id', 'report' "
                    f"and a non-empty 'image_path' list, got {record!r}"
                )
            if isinstance(image_paths, str):
                image_paths = [image_paths]
            image_path = image_dir / image_paths[0]
            if not image_path.is_file():
                raise ValueError(
                    f"image {image_path} of record {record['id']!r} not found; "
                    "check that image_dir is the folder the annotation paths are relative to"
                )
            images.append(load_image(image_path, image_size))
            reports.append(clean_report(record["report"]))
            uids.append(str(record["id"]))

        image_array = np.stack(images)[..., None] if images else np.zeros((0, image_size, image_size, 1), np.float32)
        splits[name] = RRGSplit(
            images=image_array,
            reports=reports,
            labels=label_reports(reports),
            uids=uids,
        )
        logger.info("loaded %d %s records from %s", len(uids), name, annotation_path)
    return splits
