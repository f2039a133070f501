"""Options shared by the commands that scale past one machine's memory or one process:
``--offload``, ``--offload-activations DIR`` and ``--ray auto|ADDRESS``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Offload = Annotated[
    bool,
    typer.Option(
        "--offload",
        help="keep the weights on disk and read each block only while it runs (models larger "
        "than memory; results equal the in-memory run's)",
    ),
]
OffloadActivations = Annotated[
    Path | None,
    typer.Option(
        "--offload-activations",
        help="with --offload: keep the hidden states cached between blocks in files under DIR",
        metavar="DIR",
    ),
]
Ray = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="run the work as Ray tasks (profile, apply: per block; eval: batches of windows): "
        "'auto' (a local Ray instance, or the cluster in $RAY_ADDRESS) or a cluster ADDRESS "
        "(host:6379, see 'ray start --head')",
        metavar="auto|ADDRESS",
    ),
]
