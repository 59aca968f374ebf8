"""Radiology report generation (RRG) example on IU X-Ray reports.

Run ``came-grad-rrg`` or ``python -m came_grad.examples.rrg`` to train a small
report generation model with two tasks (report writing and classification of
14 CheXpert observations) once per multi-task optimizer, and compare BLEU,
ROUGE-L and clinical efficacy. ``model``, ``tokenizer``, ``metrics``,
``optimizers`` and ``train`` contain the pieces; ``cli`` is the command.
"""
