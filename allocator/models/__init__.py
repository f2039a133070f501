"""Loading models, finding their units, and the calibration/evaluation corpora."""
