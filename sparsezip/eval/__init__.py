"""Evaluation: the resumable runner, run folders, summaries, dynamic-K calibration on a dataset and the report."""
