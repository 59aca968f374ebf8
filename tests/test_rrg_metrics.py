"""Tests of the report generation metrics on hand-made reports and labels."""

import math

import numpy as np
import pytest

from came_grad.examples.rrg import metrics


def test_identical_reports_score_one():
    reports = ["The heart is normal in size. The lungs are clear.", "No pleural effusion or pneumothorax."]

    scores = metrics.nlg_scores(reports, reports)

    for name in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l"):
        assert scores[name] == pytest.approx(1.0, abs=1e-6), name


def test_one_substitution_known_scores():
    # Cleaned: "a b c d ." against "a b c x ." (same length, so no brevity penalty).
    # Matched n-grams: 4/5 unigrams, 2/4 bigrams, 1/3 trigrams, 0/2 4-grams.
    scores = metrics.nlg_scores(["a b c d"], ["a b c x"])

    assert scores["bleu_1"] == pytest.approx(0.8, abs=1e-6)
    assert scores["bleu_2"] == pytest.approx(math.sqrt(0.8 * 0.5), abs=1e-6)
    assert scores["bleu_3"] == pytest.approx((0.8 * 0.5 / 3) ** (1 / 3), abs=1e-6)
    assert scores["bleu_4"] < 1e-3
    # LCS "a b c ." has 4 of 5 tokens on both sides.
    assert scores["rouge_l"] == pytest.approx(0.8, abs=1e-6)


def test_empty_hypothesis_scores_zero():
    scores = metrics.nlg_scores(["the heart is normal"], [""])

    assert scores["bleu_1"] == pytest.approx(0.0, abs=1e-6)
    assert scores["rouge_l"] == 0.0


def test_nlg_scores_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same length"):
        metrics.nlg_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        metrics.nlg_scores([], [])


def test_ce_scores_micro_average():
    reference = np.array([[1, 0, 1], [0, 1, 0]])
    predicted = np.array([[1, 1, 0], [0, 1, 0]])

    scores = metrics.ce_scores(reference, predicted)

    # Pooled over all cells: 2 true positives, 1 false positive, 1 false negative.
    assert scores["ce_precision"] == pytest.approx(2 / 3)
    assert scores["ce_recall"] == pytest.approx(2 / 3)
    assert scores["ce_f1"] == pytest.approx(2 / 3)


def test_ce_scores_unequal_precision_recall():
    reference = np.array([[1, 1, 1, 0]])
    predicted = np.array([[1, 0, 0, 0]])

    scores = metrics.ce_scores(reference, predicted)

    assert scores["ce_precision"] == pytest.approx(1.0)
    assert scores["ce_recall"] == pytest.approx(1 / 3)
    assert scores["ce_f1"] == pytest.approx(0.5)


def test_ce_scores_no_predicted_positives_is_zero():
    scores = metrics.ce_scores(np.array([[1, 0]]), np.array([[0, 0]]))

    assert scores == {"ce_precision": 0.0, "ce_recall": 0.0, "ce_f1": 0.0}


def test_ce_scores_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        metrics.ce_scores(np.zeros((2, 14)), np.zeros((3, 14)))


def test_clinical_efficacy_identical_reports():
    reports = ["The heart is enlarged. There is a small left pleural effusion.", "The lungs are clear."]

    scores = metrics.clinical_efficacy(reports, reports)

    assert metrics.report_labels(reports).sum() > 0
    assert scores["ce_f1"] == pytest.approx(1.0)


def test_report_metrics_has_all_keys():
    scores = metrics.report_metrics(["The heart is normal."], ["The heart is enlarged."])

    expected = {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "ce_precision", "ce_recall", "ce_f1"}
    assert set(scores) == expected
    assert all(0.0 <= value <= 1.0 for value in scores.values())
