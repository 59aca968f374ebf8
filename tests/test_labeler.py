"""Tests for the rule-based CheXpert-style report labeler."""

import numpy as np
import pytest

from came_grad.examples.rrg import labeler
from came_grad.examples.rrg.iu_xray import Report
from came_grad.examples.rrg.labeler import NEGATIVE, NOT_MENTIONED, POSITIVE, UNCERTAIN

CASES = [
    ("Mild cardiomegaly.", "Cardiomegaly", POSITIVE),
    ("The heart size is enlarged.", "Cardiomegaly", POSITIVE),
    ("Heart size is normal.", "Cardiomegaly", NEGATIVE),
    ("The heart is not enlarged.", "Cardiomegaly", NEGATIVE),
    ("The cardiomediastinal silhouette is within normal limits.", "Cardiomegaly", NEGATIVE),
    ("The cardiomediastinal silhouette is within normal limits.", "Enlarged Cardiomediastinum", NEGATIVE),
    ("The mediastinum is widened.", "Enlarged Cardiomediastinum", POSITIVE),
    ("No pleural effusion or pneumothorax.", "Pleural Effusion", NEGATIVE),
    ("No pleural effusion or pneumothorax.", "Pneumothorax", NEGATIVE),
    ("Small left pleural effusion.", "Pleural Effusion", POSITIVE),
    ("There are no XXXX of a pleural effusion.", "Pleural Effusion", NEGATIVE),
    ("Small pericardial effusion.", "Pleural Effusion", NOT_MENTIONED),
    ("Lungs are clear without focal consolidation.", "Consolidation", NEGATIVE),
    ("The lungs are clear.", "Lung Opacity", NEGATIVE),
    ("Negative for pneumonia.", "Pneumonia", NEGATIVE),
    ("The lungs are free of focal airspace disease.", "Lung Opacity", NEGATIVE),
    ("No evidence of pulmonary edema.", "Edema", NEGATIVE),
    ("Opacity in the right lower lobe may represent pneumonia.", "Pneumonia", UNCERTAIN),
    ("Opacity in the right lower lobe may represent pneumonia.", "Lung Opacity", UNCERTAIN),
    ("Possible small right effusion.", "Pleural Effusion", UNCERTAIN),
    ("Pneumonia cannot be excluded.", "Pneumonia", UNCERTAIN),
    ("Questionable nodule in the left upper lobe.", "Lung Lesion", UNCERTAIN),
    ("Findings suggestive of atelectasis.", "Atelectasis", UNCERTAIN),
    ("Likely bibasilar atelectasis.", "Atelectasis", UNCERTAIN),
    ("Calcified granuloma in the right upper lobe.", "Lung Lesion", POSITIVE),
    ("Left basilar atelectatic changes.", "Atelectasis", POSITIVE),
    ("Streaky airspace disease in the lingula.", "Lung Opacity", POSITIVE),
    ("Left-sided pacemaker with leads in the right atrium and ventricle.", "Support Devices", POSITIVE),
    ("Sternotomy wires are intact.", "Support Devices", POSITIVE),
    ("Right PICC line tip in the SVC.", "Support Devices", POSITIVE),
    ("Old healed right rib fractures.", "Fracture", POSITIVE),
    ("No acute bony abnormality.", "Fracture", NEGATIVE),
    ("Apical pleural thickening.", "Pleural Other", POSITIVE),
    ("Small right apical pneumothorax.", "Pneumothorax", POSITIVE),
    ("The pneumothorax has resolved.", "Pneumothorax", NEGATIVE),
    ("No change in the left lower lobe consolidation.", "Consolidation", POSITIVE),
    ("No effusion, but there is a small right pneumothorax.", "Pneumothorax", POSITIVE),
    ("No effusion, but there is a small right pneumothorax.", "Pleural Effusion", NEGATIVE),
    ("Mild pulmonary vascular congestion.", "Edema", POSITIVE),
]


@pytest.mark.parametrize("text,observation,expected", CASES)
def test_label_sentence(text, observation, expected):
    labels = labeler.label_report(text)
    assert labels[labeler.INDEX[observation]] == expected, f"{text!r}: {dict(zip(labeler.OBSERVATIONS, labels))}"


def test_label_report_dtype_and_unmentioned():
    labels = labeler.label_report("Heart size is normal.")
    assert labels.dtype == np.int8
    assert labels.shape == (14,)
    assert labels[labeler.INDEX["Fracture"]] == NOT_MENTIONED


def test_positive_beats_negative_across_sentences():
    labels = labeler.label_report("No pleural effusion on the right. Small left pleural effusion.")
    assert labels[labeler.INDEX["Pleural Effusion"]] == POSITIVE


def test_no_finding_rules():
    normal = labeler.label_report("Heart size normal. Lungs are clear. No effusion or pneumothorax.")
    assert normal[labeler.INDEX["No Finding"]] == POSITIVE
    device_only = labeler.label_report("Lungs are clear. Left chest wall pacemaker.")
    assert device_only[labeler.INDEX["No Finding"]] == POSITIVE
    uncertain = labeler.label_report("Possible left basilar atelectasis.")
    assert uncertain[labeler.INDEX["No Finding"]] == NEGATIVE
    abnormal = labeler.label_report("Mild cardiomegaly.")
    assert abnormal[labeler.INDEX["No Finding"]] == NEGATIVE


def test_label_reports_and_positive_labels():
    labels = labeler.label_reports(["Mild cardiomegaly.", "Possible effusion.", "No effusion."])
    assert labels.shape == (3, 14)
    assert labeler.label_reports([]).shape == (0, 14)

    ones = labeler.positive_labels(labels)
    zeros = labeler.positive_labels(labels, uncertain_as_positive=False)
    effusion = labeler.INDEX["Pleural Effusion"]
    assert ones[:, effusion].tolist() == [0, 1, 0]
    assert zeros[:, effusion].tolist() == [0, 0, 0]
    assert ones[0, labeler.INDEX["Cardiomegaly"]] == 1
    assert set(np.unique(ones)) <= {0, 1}


def test_mesh_observations_mapping():
    present = labeler.mesh_observations(
        ["Calcified Granuloma/lung/upper lobe/right", "Catheters, Indwelling", "Cardiac Shadow/enlarged/mild", "Aorta/tortuous"]
    )
    assert present[labeler.INDEX["Lung Lesion"]] == 1
    assert present[labeler.INDEX["Support Devices"]] == 1
    assert present[labeler.INDEX["Cardiomegaly"]] == 1
    assert present.sum() == 3
    assert labeler.mesh_observations(["normal"])[labeler.INDEX["No Finding"]] == 1


def make_report(findings, mesh):
    return Report(uid="CXR1", findings=findings, impression="", mesh_major=tuple(mesh), mesh_minor=(), image_ids=())


def test_mesh_agreement_counts():
    reports = [
        make_report("Mild cardiomegaly.", ["Cardiomegaly/mild"]),
        make_report("Heart size normal. Lungs are clear.", ["normal"]),
        make_report("Small right pleural effusion.", ["normal"]),
        make_report("Lungs are clear.", ["No Indexing"]),
    ]
    rows = {row.observation: row for row in labeler.mesh_agreement(reports)}
    cardiomegaly = rows["Cardiomegaly"]
    assert cardiomegaly.support == 1
    assert cardiomegaly.precision == 1.0
    assert cardiomegaly.recall == 1.0
    effusion = rows["Pleural Effusion"]
    assert effusion.support == 0
    assert effusion.predicted == 1
    assert effusion.accuracy == pytest.approx(2 / 3)
    no_finding = rows["No Finding"]
    assert no_finding.support == 2
    assert no_finding.recall == 0.5
    assert "micro average" in rows
    assert "Cardiomegaly" in labeler.format_agreement(labeler.mesh_agreement(reports))
