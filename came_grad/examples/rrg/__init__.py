"""Radiology report generation (RRG) example on IU X-Ray reports."""
