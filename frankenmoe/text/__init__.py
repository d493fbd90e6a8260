"""Text the pipeline reads: corpora, calibration windows, overlap with evaluation text."""
