"""Thin absl-flag binaries that reproduce the paper's experiments."""
