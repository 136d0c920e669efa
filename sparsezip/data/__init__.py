"""Datasets: loaders for the on-disk layouts users have, prompts, and the synthetic-data generator."""
