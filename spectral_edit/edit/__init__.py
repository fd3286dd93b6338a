"""Editing: the SVD cache of dW, the spectral edit methods, the edited weights, calibration sensitivities and the
random-matrix law the thresholds use (rules/svd.smk)."""
