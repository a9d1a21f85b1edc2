"""Uncertainty quantification: calibration of variances (ensembles and other heads)."""
