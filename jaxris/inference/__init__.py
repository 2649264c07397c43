"""Predictors: SAM (points/boxes/masks), DIT-SAM and EVF-SAM text prompting, from converted or exported weights."""
