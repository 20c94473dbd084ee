"""Evaluation: the published metrics, whole-image inference (padding, TLC), mesh validation and ``eval.py``."""
