"""HTTP service: the solver behind a small JSON API (standard library only)."""
