"""Data preparation: sources -> readers -> canonical examples + validation -> tokenization.

This package imports neither `training` nor `flows`.
"""
