"""The tiny model folder the service tests use (built by ``tests.helpers.save_tiny_model``)."""

from tests.helpers import save_tiny_model

__all__ = ["save_tiny_model"]
