"""Quantizable units: a linear layer's weight (or any 2-D weight) identified by its module name."""

from __future__ import annotations

from pydantic import ConfigDict, Field, model_validator

from allocator.schema.base import SchemaModel

MAX_DIM = 2**31  # one side of a weight matrix
MAX_NUMEL = 2**50  # exact in a float, and x64 bits per weight still far from overflow


class Unit(SchemaModel):
    """One weight matrix the allocator chooses an option for.

    ``shape`` is (out_features, in_features) as in ``nn.Linear.weight``; ``numel`` their product.
    ``kind`` is the projection type (``q_proj``, ``down_proj``...); ``tie`` a key shared by units a
    runtime fuses (q/k/v, gate/up, MoE experts); ``layer`` the block index when known.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [{"name": "model.layers.0.mlp.down_proj", "shape": [576, 1536]}]
        },
    )

    name: str = Field(
        min_length=1,
        max_length=1000,
        description="The module's full name, as named_modules() gives it.",
        examples=["model.layers.0.self_attn.q_proj"],
    )
    shape: tuple[int, int] | None = Field(
        default=None,
        description="(out_features, in_features) of the weight; group counts use it.",
        examples=[[576, 576], None],
    )
    numel: int = Field(
        default=0,
        ge=0,
        le=MAX_NUMEL,
        description="Number of weights; derived from shape when shape is given.",
        examples=[331776],
    )
    kind: str = Field(
        default="",
        max_length=1000,
        description="Projection type (q_proj, down_proj...), used by rule-based baselines.",
        examples=["q_proj", ""],
    )
    tie: str | None = Field(
        default=None,
        max_length=2000,
        description="Key shared by units a runtime fuses (q/k/v, gate/up); tie presets use it.",
        examples=["model.layers.0.self_attn.qkv", None],
    )
    layer: int | None = Field(
        default=None,
        ge=0,
        le=10**9,
        description="Block index when known.",
        examples=[0, None],
    )

    @model_validator(mode="after")
    def _numel_from_shape(self) -> Unit:
        if self.shape is not None:
            if not all(1 <= side <= MAX_DIM for side in self.shape):
                raise ValueError(
                    f"unit {self.name}: shape {self.shape}: each side must be between 1 and "
                    f"{MAX_DIM} (out_features, in_features)"
                )
            product = self.shape[0] * self.shape[1]
            if self.numel and self.numel != product:
                raise ValueError(
                    f"unit {self.name}: numel={self.numel} but shape {self.shape} holds {product}"
                )
            if product > MAX_NUMEL:
                raise ValueError(
                    f"unit {self.name}: shape {self.shape} holds over {MAX_NUMEL} weights"
                )
            object.__setattr__(self, "numel", product)
        if self.numel <= 0:
            raise ValueError(f"unit {self.name}: give shape or a positive numel")
        return self

    @property
    def in_features(self) -> int | None:
        return None if self.shape is None else self.shape[1]
