"""Report generation metrics: BLEU-1..4, ROUGE-L and clinical efficacy.

BLEU and ROUGE-L come from pycocoevalcap (the COCO caption evaluation code
that report generation papers use). Both take whitespace-tokenized text, so
reports are first cleaned with `tokenizer.clean_report`. BLEU is corpus level
(n-gram counts and brevity penalty summed over all reports). ROUGE-L is the
mean of the per-report ROUGE-L F-scores with beta 1.2, as pycocoevalcap
computes it.

Clinical efficacy (CE) labels generated and reference reports with the
rule-based CheXpert-style labeler and scores the generated labels against the
reference labels. Precision, recall and F1 are micro-averaged: true positives,
false positives and false negatives are summed over all (report, observation)
pairs of the 14 observations before the ratios are taken.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from came_grad.examples.rrg.tokenizer import clean_report


def _check_pairs(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(
            f"references and hypotheses must have the same length, got {len(references)} and {len(hypotheses)}"
        )
    if not references:
        raise ValueError("references is empty; pass at least one report pair")


def nlg_scores(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Compute corpus BLEU-1..4 and ROUGE-L of generated reports.

    Args:
        references: One reference report per example.
        hypotheses: One generated report per example, in the same order.

    Returns:
        ``{"bleu_1", ..., "bleu_4", "rouge_l"}`` as floats in [0, 1].
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.rouge.rouge import Rouge

    _check_pairs(references, hypotheses)
    gts = {i: [clean_report(text)] for i, text in enumerate(references)}
    res = {i: [clean_report(text)] for i, text in enumerate(hypotheses)}

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)

    scores = {f"bleu_{n}": float(value) for n, value in enumerate(bleu, start=1)}
    scores["rouge_l"] = float(rouge)
    return scores


def ce_scores(reference_labels: np.ndarray, predicted_labels: np.ndarray) -> dict[str, float]:
    """Compute micro-averaged precision, recall and F1 of binary label arrays.

    Args:
        reference_labels: ``[N, C]`` array, nonzero = positive.
        predicted_labels: ``[N, C]`` array of the same shape.

    Returns:
        ``{"ce_precision", "ce_recall", "ce_f1"}``. A ratio whose denominator
        is zero (no predicted or no reference positives) is 0.0.
    """
    reference = np.asarray(reference_labels) != 0
    predicted = np.asarray(predicted_labels) != 0
    if reference.shape != predicted.shape or reference.ndim != 2:
        raise ValueError(
            "reference_labels and predicted_labels must be [N, C] arrays of the same shape, "
            f"got {reference.shape} and {predicted.shape}"
        )

    true_positives = int(np.sum(reference & predicted))
    predicted_positives = int(predicted.sum())
    reference_positives = int(reference.sum())

    precision = true_positives / predicted_positives if predicted_positives else 0.0
    recall = true_positives / reference_positives if reference_positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"ce_precision": precision, "ce_recall": recall, "ce_f1": f1}


def report_labels(reports: Sequence[str]) -> np.ndarray:
    """Label reports with the rule-based labeler and return binary ``[N, 14]`` positives."""
    from came_grad.examples.rrg import labeler

    return np.asarray(labeler.positive_labels(labeler.label_reports(list(reports)))).astype(bool)


def clinical_efficacy(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Compute CE precision, recall and F1 of generated reports against references.

    Both sides are labeled by the same rule-based labeler, and an observation
    counts as present only when the labeler marks it positive.
    """
    _check_pairs(references, hypotheses)
    return ce_scores(report_labels(references), report_labels(hypotheses))


def report_metrics(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Compute BLEU-1..4, ROUGE-L and CE precision, recall and F1 in one dict."""
    return {**nlg_scores(references, hypotheses), **clinical_efficacy(references, hypotheses)}
