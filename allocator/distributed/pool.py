"""Connecting to Ray and mapping a function over tasks (Ray schedules, retries and transfers).

``--ray auto`` starts a Ray instance inside this process's session (the embedded default: all
local cores) unless one is already initialized; ``--ray ADDRESS`` joins a running cluster
(``ray start --head`` on one machine, ``ray start --address HEAD:6379`` on the others, then
``--ray HEAD:6379`` or ``--ray auto`` with ``RAY_ADDRESS`` set). Tasks are retried by Ray when
their worker dies (``max_retries``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from allocator.errors import UnsupportedError

MAX_RETRIES = 3


def connect(address: str | None = "auto") -> Any:
    """The ``ray`` module, initialized: a local instance for ``auto``, else the cluster."""
    try:
        import ray
    except ImportError:
        raise UnsupportedError(
            "--ray needs the ray package: pip install 'allocator[ray]'"
        ) from None
    if not ray.is_initialized():
        if address in (None, "", "auto", "local") and not os.environ.get("RAY_ADDRESS"):
            ray.init(include_dashboard=False, logging_level=logging.ERROR)
        else:
            target = None if address in (None, "", "auto", "local") else address
            refused_token = _as_tuple(
                getattr(getattr(ray, "exceptions", None), "AuthenticationError", ())
            )
            caught: tuple[type[BaseException], ...] = (
                ConnectionError,
                TimeoutError,
                *refused_token,
            )
            try:
                ray.init(address=target, logging_level=logging.ERROR)
            except caught as exc:
                where = target or f"$RAY_ADDRESS={os.environ.get('RAY_ADDRESS')}"
                if _token_refused(exc, refused_token):
                    raise UnsupportedError(
                        f"--ray {where}: the cluster refused this driver's authentication token "
                        "(a cluster from 'ray start' uses token authentication since Ray 2.52); "
                        "set RAY_AUTH_MODE=token, with the cluster's token in ~/.ray/auth_token, "
                        f"$RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH ({_first_line(exc)})"
                    ) from None
                raise UnsupportedError(
                    f"--ray {where}: no Ray cluster answered ({exc}); start one with 'ray start "
                    "--head' and pass the address it prints (HOST:6379), or use --ray auto for "
                    "a local instance"
                ) from None
    return ray


def _as_tuple(kind: Any) -> tuple[type[BaseException], ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _token_refused(exc: BaseException, kind: Any) -> bool:
    """Whether Ray refused the driver's token: Ray's AuthenticationError anywhere in the chain
    of causes, or its InvalidAuthToken message (the address itself is not searched)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, _as_tuple(kind)) or "invalidauthtoken" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _first_line(exc: BaseException) -> str:
    """Ray's own words on the refusal: its line naming the token, else its first line."""
    lines = [line.strip() for line in str(exc.__cause__ or exc).splitlines() if line.strip()]
    named = [line for line in lines if "authtoken" in line.lower() or "token" in line.lower()]
    return (named or lines or [type(exc).__name__])[0][:200]


class RayPool:
    """``map(fn, tasks)``: ``fn(*task)`` for every task as Ray tasks, results in task order."""

    def __init__(self, address: str | None = "auto", *, num_gpus: float = 0) -> None:
        self.ray = connect(address)
        self.num_gpus = num_gpus
        self._remote: dict[Any, Any] = {}

    def _fn(self, fn: Callable[..., Any]) -> Any:
        remote = self._remote.get(fn)
        if remote is None:
            remote = self.ray.remote(max_retries=MAX_RETRIES)(fn)
            self._remote[fn] = remote
        return remote

    def slots(self, *, gpu: bool = False) -> int:
        """How many tasks the cluster runs at once: its CPUs (GPUs for ``gpu`` tasks)."""
        resources = self.ray.cluster_resources()
        key = "GPU" if gpu and self.num_gpus else "CPU"
        return max(1, int(resources.get(key, 1)))

    def put(self, value: Any) -> Any:
        """Store a large shared argument once (tasks receive the value)."""
        return self.ray.put(value)

    def map(
        self,
        fn: Callable[..., Any],
        tasks: Sequence[tuple[Any, ...]],
        *,
        on_result: Callable[[int, Any], None] | None = None,
        gpu: bool = False,
    ) -> list[Any]:
        """``gpu``: each task asks for one GPU when the pool was made for ``--device cuda``."""
        remote = self._fn(fn)
        options = {"num_cpus": 1, "num_gpus": self.num_gpus if gpu else 0}
        refs = [remote.options(**options).remote(*task) for task in tasks]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        while pending:
            ready, pending = self.ray.wait(pending, num_returns=1)
            for ref in ready:
                i = index[ref]
                results[i] = self.ray.get(ref)
                if on_result is not None:
                    on_result(i, results[i])
        return results


def pool_for(address: str | None, device: str = "cpu") -> RayPool | None:
    """A RayPool for ``--ray ADDRESS`` (None without ``--ray``); GPU tasks with ``--device cuda``."""
    if address is None:
        return None
    return RayPool(address, num_gpus=1 if str(device).startswith("cuda") else 0)
