"""Datasets: the public folder layout, converters into it, splits, duplicates, torch datasets."""

from __future__ import annotations
