"""Sensitivity profiling: calibration capture, estimators in a registry, and the profile() API."""
