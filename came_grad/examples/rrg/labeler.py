"""Rule-based labeler for the 14 CheXpert observations in report text.

The labeler follows the approach of the CheXpert and NegBio labelers
(mention extraction, then negation and uncertainty detection per
sentence) with its own rules, written for the wording of IU X-Ray
reports. It works on lowercased text split into sentences and clauses:

1. Mention: each observation has regular expressions for phrases that
   state it ("cardiomegaly", "heart size is enlarged", "calcified
   granuloma" -> Lung Lesion, "sternotomy wires" -> Support Devices).
2. Status of a mention, checked in this order:
   uncertain if the clause contains "cannot be excluded" or similar;
   negative if a negation cue ("no", "without", "negative for", "free
   of", "not") precedes the mention in its clause, or a cue such as "is
   not seen" or "has resolved" follows it;
   uncertain if a hedge ("may", "possible", "questionable", "suggestive
   of", "likely", "versus") occurs in the clause;
   positive otherwise.
3. Normal statements ("heart size is normal", "the lungs are clear",
   "cardiomediastinal silhouette is within normal limits") give negative
   labels for the observations they rule out.
4. Per report, the strongest status wins: positive over uncertain over
   negative over not mentioned.
5. No Finding is positive when no observation other than Support Devices
   is positive or uncertain, and negative otherwise.

Label encoding (int8, column order :data:`OBSERVATIONS`):
``POSITIVE = 1``, ``NEGATIVE = 0``, ``UNCERTAIN = -1`` and
``NOT_MENTIONED = -2``. The hierarchy of CheXpert (e.g. Consolidation
implies Lung Opacity) is not propagated, so labels stay comparable to
the MeSH tags that :func:`mesh_agreement` scores against.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence

import numpy as np

OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
NUM_OBSERVATIONS = len(OBSERVATIONS)
INDEX = {name: index for index, name in enumerate(OBSERVATIONS)}

POSITIVE = 1
NEGATIVE = 0
UNCERTAIN = -1
NOT_MENTIONED = -2

# Aggregation priority per report: a higher rank wins.
_RANK = {NOT_MENTIONED: 0, NEGATIVE: 1, UNCERTAIN: 2, POSITIVE: 3}


# Phrases whose presence states the observation. Matching is on lowercased
# text, one clause at a time.
MENTIONS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        r"\b(?:mediastinum|mediastinal(?: silhouette| contours?| width| shadow)?|"
        r"paratracheal(?: stripe| soft tissues?)?)\b[^,]{0,40}?\b(?:widened|widening|wide|enlarged|enlargement|prominent|prominence)\b",
        r"\b(?:widened|widening of the|wide|enlarged|prominent)\s+(?:superior\s+)?(?:mediastinum|mediastinal|cardiomediastinal)\b",
        r"\bmediastinal (?:widening|enlargement|mass|adenopathy|lymphadenopathy)\b",
    ),
    "Cardiomegaly": (
        r"\bcardiomegaly\b",
        r"\b(?:heart|cardiac(?: silhouette| shadow| size| contour)?|cardiac|cardiomediastinal silhouette|"
        r"cardiopericardial silhouette)\b[^,]{0,40}?\b(?:enlarged|enlargement|large|increased|prominent)\b",
        r"\b(?:enlarged|large|increased)\s+(?:heart|cardiac|cardiomediastinal)\b",
        r"\bheart size (?:is )?(?:at the )?upper limits? of normal\b",
        r"\b(?:borderline|mildly enlarged) (?:heart|cardiac)\b",
        r"\b(?:heart|cardiac) (?:size|silhouette) (?:is )?(?:borderline|top normal|top-normal|upper normal)\b",
    ),
    "Lung Lesion": (
        r"\bnodul(?:e|es|ar)\b",
        r"\bmass(?:es)?\b",
        r"\bgranulom(?:a|as|ata|atous)\b",
        r"\blesions?\b",
        r"\b(?:neoplasm|tumor|tumour|malignancy|carcinoma|metastas[ie]s|metastatic)\b",
        r"\bcavitary\b|\bcavitation\b",
    ),
    "Lung Opacity": (
        r"\bopacit(?:y|ies)\b",
        r"\bopacification\b",
        r"\bair ?space (?:disease|opacit(?:y|ies)|process)\b",
        r"\binfiltrat(?:e|es|ion|ive)\b",
        r"\bdensit(?:y|ies)\b",
        r"\bhaz(?:e|iness|y)\b",
        r"\bground[- ]glass\b",
    ),
    "Edema": (
        r"\bedema\b",
        r"\b(?:vascular|venous|pulmonary) congestion\b",
        r"\bcongestive (?:heart failure|changes)\b",
        r"\bheart failure\b|\bchf\b",
        r"\bfluid overload\b",
        r"\bkerley\b",
        r"\b(?:increased|prominent|engorged) (?:pulmonary |lung |central )?vascul(?:ar|arity|ature)\b",
        r"\b(?:pulmonary |lung )?vascul(?:arity|ature)\b[^,]{0,30}?\b(?:prominent|increased|engorged|indistinct)\b",
        r"\bvascular (?:prominence|engorgement|indistinctness|cephalization)\b",
    ),
    "Consolidation": (
        r"\bconsolidat(?:ion|ions|ive|ed)\b",
    ),
    "Pneumonia": (
        r"\bpneumonias?\b",
        r"\bpneumonitis\b",
        r"\binfecti(?:on|ous)\b",
        r"\bbronchopneumonia\b",
    ),
    "Atelectasis": (
        r"\batelecta(?:sis|ses|tic)\b",
        r"\b(?:lobar |segmental )?collapse\b",
    ),
    "Pneumothorax": (
        r"\bpneumothora(?:x|ces)\b",
    ),
    "Pleural Effusion": (
        r"(?<!pericardial )\beffusions?\b",
        r"\bpleural fluid\b",
        r"\bhydropneumothorax\b",
    ),
    "Pleural Other": (
        r"\bpleural (?:thickening|scarring|scar|plaques?|calcifications?|reaction)\b",
        r"\bpleural[- ]parenchymal (?:scarring|thickening)\b",
        r"\bapical (?:pleural )?(?:capping|thickening|scarring)\b",
        r"\bfibrothorax\b",
    ),
    "Fracture": (
        r"\bfractur(?:e|es|ed)\b",
    ),
    "Support Devices": (
        r"\bpacemaker\b|\bpacer\b",
        r"\b(?:aicd|icd|defibrillator)\b",
        r"\bcatheters?\b",
        r"\b(?:picc|central venous|central) line\b|\bpicc\b",
        r"\b(?:port-a-cath|portacath|port|mediport)\b|\bxxxx-a-xxxx\b",
        r"\btip (?:is |terminates |projects |projecting |overlies |overlying |in |at |within )",
        r"\b(?:endotracheal|et|nasogastric|ng|enteric|feeding|chest|tracheostomy|gastric) tubes?\b",
        r"\btubes?\b|\btubing\b",
        r"\bsternotomy\b",
        r"\b(?:surgical|mediastinal|axillary|vascular|sternotomy) clips?\b",
        r"\bstents?\b",
        r"\bleads?\b",
        r"\b(?:generator|stimulator|hardware|prosthesis|prosthetic|device|devices)\b",
        r"\b(?:valve replacement|replaced valve|cabg)\b",
    ),
}

# Phrases that rule observations out. Each maps to the observations it
# makes negative.
NORMAL_STATEMENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        r"\b(?:heart|cardiac)(?: size| silhouette| contours?| shadow)?(?: and [a-z ]{1,40}?)? "
        r"(?:is |are |appears? |remains? |appear )?(?:grossly |otherwise |again )?"
        r"(?:normal|within normal limits|unremarkable|not enlarged)\b",
        ("Cardiomegaly",),
    ),
    (
        r"\bnormal (?:heart|cardiac)(?: size| silhouette| contours?)?\b|\bheart size normal\b|"
        r"\b(?:heart|cardiac silhouette) (?:is )?normal in size\b",
        ("Cardiomegaly",),
    ),
    (
        r"\bcardiomediastinal (?:silhouette|contours?)(?: and [a-z ]{1,40}?)? (?:is |are |appears? |remains? )?"
        r"(?:grossly |otherwise )?(?:normal|within normal limits|unremarkable)\b|"
        r"\bnormal cardiomediastinal (?:silhouette|contours?)\b|"
        r"\b(?:heart|cardiac) and mediastin(?:um|al)(?: contours?| silhouettes?)? (?:are |is |appear )?"
        r"(?:normal|within normal limits|unremarkable)\b",
        ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    ),
    (
        r"\bmediastin(?:um|al)(?: silhouette| contours?)?(?: and [a-z ]{1,40}?)? (?:is |are |appears? |remains? )?"
        r"(?:normal|within normal limits|unremarkable)\b|\bnormal mediastin(?:um|al)(?: silhouette| contours?)?\b",
        ("Enlarged Cardiomediastinum",),
    ),
    (
        r"\blungs? (?:are |is |appear |remains? )?(?:grossly |otherwise |now )?clear\b|\bclear lungs?\b",
        ("Lung Opacity", "Consolidation", "Pneumonia", "Edema"),
    ),
    (
        r"\b(?:pulmonary vascularity|pulmonary vasculature|vascularity)(?: is| are| appears?)? (?:normal|within normal limits)\b|"
        r"\bnormal (?:pulmonary )?vascularity\b",
        ("Edema",),
    ),
    (
        r"\bno (?:acute )?(?:bony|osseous) (?:abnormalit(?:y|ies)|findings?|injury|lesions?)\b|"
        r"\bosseous structures (?:are |appear )?(?:intact|normal|unremarkable)\b",
        ("Fracture",),
    ),
    (
        r"\bno (?:acute )?(?:pleural )?(?:abnormalit(?:y|ies)|disease|findings?) (?:of|in) the pleura\b|"
        r"\bno pleural (?:abnormalit(?:y|ies)|disease)\b",
        ("Pleural Effusion", "Pleural Other"),
    ),
)

# "No change" and similar do not negate the finding that follows.
_PSEUDO_NEGATION = re.compile(
    r"\b(?:no (?:significant |interval |appreciable |substantial )?change|not (?:significantly )?changed|"
    r"no (?:significant )?interval (?:increase|decrease)|no longer (?:seen )?as|not only)\b"
)
_NEGATION_BEFORE = re.compile(
    r"\b(?:no|not|without|negative for|free of|absence of|absent|clear of|resolution of|resolved|"
    r"rather than|exclude[sd]?|ruled? out|nor|neither|removal of|removed)\b"
)
_NEGATION_AFTER = re.compile(
    r"^[^,]{0,40}?\b(?:(?:is|are|was|were|has been|have been) (?:not|no longer)"
    r"(?: (?:seen|identified|present|visualized|demonstrated|evident|appreciated|noted|enlarged|visible))?|"
    r"(?:has|have) (?:resolved|cleared)|resolved|absent|removed|not (?:seen|identified|present|evident|appreciated))\b"
)
_STRONG_UNCERTAINTY = re.compile(
    r"\b(?:can ?not|could not|can't) (?:be )?(?:excluded?|ruled? out|entirely excluded?|completely excluded?)|"
    r"\bnot (?:be )?(?:entirely |completely )?(?:excluded|ruled out)|\bdifficult to exclude\b"
)
_UNCERTAINTY = re.compile(
    r"\b(?:may|might|could|possible|possibly|possibility|questionable|question of|questioned|suggestive|suggests?|"
    r"suggesting|likely|probable|probably|suspect(?:ed)?|suspicious|concern(?:ing)? for|consider(?:ed)?|"
    r"versus|vs|differential|equivocal|indeterminate|borderline|upper limits? of normal|top normal|top-normal|"
    r"presumed|presumably|favor(?:ed)?|compatible with|consistent with|represent(?:s|ing)?|"
    r"cannot|uncertain|unclear)\b|\?"
)
# Hedges that are too weak on their own in IU X-Ray wording: "consistent
# with" and "compatible with" usually state a finding.
_WEAK_HEDGES = {"consistent with", "compatible with", "represent", "represents", "representing"}

_CLAUSE_BREAK = re.compile(r";|\bbut\b|\bhowever\b|\balthough\b|\bthough\b|\bwhereas\b|\bexcept\b|\baside from\b|\bapart from\b|\bwhich\b|\bwith (?:the )?exception\b")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+|(?<=\S)\.(?=[a-z]{2})|\s\d+\.\s")


def split_sentences(text: str) -> list[str]:
    """Split lowercased report text into sentences."""
    text = " ".join(text.lower().split())
    return [sentence.strip(" .") for sentence in _SENTENCE_BREAK.split(text) if sentence.strip(" .")]


def _split_clauses(sentence: str) -> list[str]:
    pieces = []
    start = 0
    for match in _CLAUSE_BREAK.finditer(sentence):
        pieces.append(sentence[start : match.start()])
        start = match.start()
    pieces.append(sentence[start:])
    return [piece for piece in pieces if piece.strip()]


def _uncertain(text: str) -> bool:
    for match in _UNCERTAINTY.finditer(text):
        if match.group(0) not in _WEAK_HEDGES:
            return True
    return False


def mention_status(clause: str, start: int, end: int) -> int:
    """Classify one mention ``clause[start:end]`` as positive, negative or uncertain."""
    before = _PSEUDO_NEGATION.sub(" ", clause[:start])
    mention = clause[start:end]
    after = clause[end:]

    if _STRONG_UNCERTAINTY.search(clause):
        return UNCERTAIN
    if _NEGATION_BEFORE.search(before) or re.search(r"\bnot\b", mention) or _NEGATION_AFTER.search(after):
        return NEGATIVE
    if _uncertain(before + " " + mention + " " + after):
        return UNCERTAIN
    return POSITIVE


def _merge(current: int, new: int) -> int:
    return new if _RANK[new] > _RANK[current] else current


_COMPILED_MENTIONS = {name: [re.compile(pattern) for pattern in patterns] for name, patterns in MENTIONS.items()}
_COMPILED_NORMALS = [(re.compile(pattern), names) for pattern, names in NORMAL_STATEMENTS]


def label_report(text: str) -> np.ndarray:
    """Label one report.

    Args:
        text: Report text (findings, impression or both), any case.

    Returns:
        int8 ``[14]`` in :data:`OBSERVATIONS` order with values
        ``POSITIVE`` (1), ``NEGATIVE`` (0), ``UNCERTAIN`` (-1) or
        ``NOT_MENTIONED`` (-2).
    """
    labels = np.full(NUM_OBSERVATIONS, NOT_MENTIONED, dtype=np.int8)

    for sentence in split_sentences(text):
        for clause in _split_clauses(sentence):
            for pattern, names in _COMPILED_NORMALS:
                match = pattern.search(clause)
                if match is None:
                    continue
                # "heart size is not normal" or "upper limits of normal" is no normal statement.
                if re.search(r"\bnot (?:normal|within)|\blimits? of normal|\babnormal\b", clause[max(0, match.start() - 30) : match.end()]):
                    continue
                for name in names:
                    labels[INDEX[name]] = _merge(int(labels[INDEX[name]]), NEGATIVE)

            for name, patterns in _COMPILED_MENTIONS.items():
                status = int(labels[INDEX[name]])
                for pattern in patterns:
                    for match in pattern.finditer(clause):
                        status = _merge(status, mention_status(clause, match.start(), match.end()))
                labels[INDEX[name]] = status

    pathology = np.delete(labels, [INDEX["No Finding"], INDEX["Support Devices"]])
    has_finding = np.any((pathology == POSITIVE) | (pathology == UNCERTAIN))
    labels[INDEX["No Finding"]] = NEGATIVE if has_finding else POSITIVE
    return labels


def label_reports(texts: Iterable[str]) -> np.ndarray:
    """Label many reports.

    Args:
        texts: Report texts.

    Returns:
        int8 ``[N, 14]``, see :func:`label_report`.
    """
    rows = [label_report(text) for text in texts]
    if not rows:
        return np.zeros((0, NUM_OBSERVATIONS), np.int8)
    return np.stack(rows)


def positive_labels(labels: np.ndarray, uncertain_as_positive: bool = True) -> np.ndarray:
    """Binarize labels for training targets and metrics.

    Args:
        labels: int8 labels from :func:`label_reports`, any shape.
        uncertain_as_positive: Count ``UNCERTAIN`` as positive (the
            "U-Ones" policy of CheXpert). When False, uncertain counts as
            negative ("U-Zeros").

    Returns:
        int8 array of the same shape with 1 for positive and 0 otherwise.
        ``NOT_MENTIONED`` and ``NEGATIVE`` map to 0.
    """
    labels = np.asarray(labels)
    positive = labels == POSITIVE
    if uncertain_as_positive:
        positive = positive | (labels == UNCERTAIN)
    return positive.astype(np.int8)


# Leading MeSH headings (the text before the first "/") that mark each
# observation in IU X-Ray's human annotation. Lung Lesion includes the
# calcified granulomas that IU X-Ray reports mention most often.
MESH_TO_OBSERVATION: dict[str, str] = {
    "normal": "No Finding",
    "Cardiomegaly": "Cardiomegaly",
    "Pulmonary Atelectasis": "Atelectasis",
    "Pleural Effusion": "Pleural Effusion",
    "Pneumothorax": "Pneumothorax",
    "Pulmonary Edema": "Edema",
    "Pulmonary Congestion": "Edema",
    "Pneumonia": "Pneumonia",
    "Consolidation": "Consolidation",
    "Opacity": "Lung Opacity",
    "Airspace Disease": "Lung Opacity",
    "Infiltrate": "Lung Opacity",
    "Nodule": "Lung Lesion",
    "Granulomatous Disease": "Lung Lesion",
    "Calcified Granuloma": "Lung Lesion",
    "Granuloma": "Lung Lesion",
    "Mass": "Lung Lesion",
    "Fractures, Bone": "Fracture",
    "Catheters, Indwelling": "Support Devices",
    "Implanted Medical Device": "Support Devices",
    "Medical Device": "Support Devices",
    "Tube, Inserted": "Support Devices",
    "Stents": "Support Devices",
    "Surgical Instruments": "Support Devices",
}


# MeSH terms that mark an observation only with a qualifier: the heading
# must match and the qualifier must be one of the later "/" parts.
MESH_QUALIFIED_TO_OBSERVATION: dict[tuple[str, str], str] = {
    ("Cardiac Shadow", "enlarged"): "Cardiomegaly",
    ("Mediastinum", "enlarged"): "Enlarged Cardiomediastinum",
    ("Mediastinum", "prominent"): "Enlarged Cardiomediastinum",
    ("Thickening", "pleura"): "Pleural Other",
}


def mesh_observations(mesh_terms: Sequence[str]) -> np.ndarray:
    """Map MeSH terms to a 0/1 int8 ``[14]`` vector of observations.

    Args:
        mesh_terms: MeSH terms such as ``"Cardiomegaly/mild"``; only the
            heading before the first ``/`` is used.

    Returns:
        1 where a term maps to the observation, else 0.
    """
    present = np.zeros(NUM_OBSERVATIONS, np.int8)
    for term in mesh_terms:
        parts = [part.strip() for part in term.split("/")]
        name = MESH_TO_OBSERVATION.get(parts[0])
        if name is not None:
            present[INDEX[name]] = 1
        for (heading, qualifier), name in MESH_QUALIFIED_TO_OBSERVATION.items():
            if parts[0] == heading and qualifier in parts[1:]:
                present[INDEX[name]] = 1
    return present


@dataclasses.dataclass(frozen=True)
class AgreementRow:
    """Binary agreement of the labeler with MeSH tags for one observation."""

    observation: str
    accuracy: float
    precision: float
    recall: float
    f1: float
    support: int
    predicted: int


def _scores(name: str, predicted: np.ndarray, target: np.ndarray) -> AgreementRow:
    true_positive = int(np.sum(predicted & target))
    predicted_count = int(predicted.sum())
    support = int(target.sum())
    precision = true_positive / predicted_count if predicted_count else 0.0
    recall = true_positive / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = float(np.mean(predicted == target)) if target.size else 0.0
    return AgreementRow(name, accuracy, precision, recall, f1, support, predicted_count)


def mesh_agreement(reports: Sequence, uncertain_as_positive: bool = True) -> list[AgreementRow]:
    """Score the labeler against the human MeSH tags of IU X-Ray reports.

    The labeler reads FINDINGS and IMPRESSION together. An observation is
    a MeSH positive when any of the report's major or minor terms maps to
    it through :data:`MESH_TO_OBSERVATION` or
    :data:`MESH_QUALIFIED_TO_OBSERVATION`.
    Reports whose only MeSH term is ``No Indexing`` are skipped.

    Args:
        reports: Objects with ``findings``, ``impression``, ``mesh_major``
            and ``mesh_minor`` attributes (e.g. ``iu_xray.Report``).
        uncertain_as_positive: Passed to :func:`positive_labels`.

    Returns:
        One row per scored observation followed by a ``"micro average"``
        row that pools the counts of all scored observations.
    """
    kept = [report for report in reports if not all(term.startswith("No Indexing") for term in report.mesh_major + report.mesh_minor)]
    texts = [f"{report.findings} {report.impression}" for report in kept]
    predicted = positive_labels(label_reports(texts), uncertain_as_positive).astype(bool)
    target = np.stack([mesh_observations(report.mesh_major + report.mesh_minor) for report in kept]).astype(bool)

    mapped = set(MESH_TO_OBSERVATION.values()) | set(MESH_QUALIFIED_TO_OBSERVATION.values())
    scored = sorted(mapped, key=INDEX.__getitem__)
    rows = [_scores(name, predicted[:, INDEX[name]], target[:, INDEX[name]]) for name in scored]
    columns = [INDEX[name] for name in scored]
    rows.append(_scores("micro average", predicted[:, columns].ravel(), target[:, columns].ravel()))
    return rows


def format_agreement(rows: Sequence[AgreementRow]) -> str:
    """Format :func:`mesh_agreement` rows as a plain-text table."""
    lines = [f"{'observation':<28}{'acc':>7}{'prec':>7}{'rec':>7}{'f1':>7}{'support':>9}{'pred':>7}"]
    for row in rows:
        lines.append(
            f"{row.observation:<28}{row.accuracy:7.3f}{row.precision:7.3f}{row.recall:7.3f}{row.f1:7.3f}"
            f"{row.support:9d}{row.predicted:7d}"
        )
    return "\n".join(lines)
