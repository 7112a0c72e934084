"""Evaluation of learned representations: features, kNN, linear probes, the kNN callback, and pictures."""
