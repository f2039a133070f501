"""Quantizable units: a linear layer's weight (or any 2-D weight) identified by its module name."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Unit(BaseModel):
    """One weight matrix the allocator chooses an option for.

    ``shape`` is (out_features, in_features) as in ``nn.Linear.weight``; ``numel`` their product.
    ``kind`` is the projection type (``q_proj``, ``down_proj``...); ``tie`` a key shared by units a
    runtime fuses (q/k/v, gate/up, MoE experts); ``layer`` the block index when known.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    shape: tuple[int, int] | None = None
    numel: int = Field(default=0, ge=0)
    kind: str = ""
    tie: str | None = None
    layer: int | None = None

    @model_validator(mode="after")
    def _numel_from_shape(self) -> Unit:
        if self.shape is not None:
            product = self.shape[0] * self.shape[1]
            if self.numel and self.numel != product:
                raise ValueError(
                    f"unit {self.name}: numel={self.numel} but shape {self.shape} holds {product}"
                )
            object.__setattr__(self, "numel", product)
        if self.numel <= 0:
            raise ValueError(f"unit {self.name}: give shape or a positive numel")
        return self

    @property
    def in_features(self) -> int | None:
        return None if self.shape is None else self.shape[1]
