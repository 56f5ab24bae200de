"""Hydra configs shipped with the package (found by the CLI from an installed wheel)."""
