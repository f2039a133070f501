"""Bundled example data (a synthetic SmolLM2-shaped table and constraints)."""
