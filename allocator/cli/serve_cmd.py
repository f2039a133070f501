"""``allocator serve``: the allocation service (FastAPI on uvicorn; ``--legacy``: the old
stdlib JSON server, kept as a benchmark baseline)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

import typer

from allocator.errors import InputError


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        host: str = typer.Option("127.0.0.1", help="address to bind (loopback by default)"),
        port: int = typer.Option(8765, help="port (0 picks a free one)"),
        workers: int = typer.Option(2, min=0, help="solver processes and concurrent jobs"),
        data_dir: Annotated[
            Path | None,
            typer.Option(help="job database and job folders (default: allocator cache/serve)"),
        ] = None,
        data_root: Annotated[
            Path | None,
            typer.Option(help="the only folder job settings may read models/texts from"),
        ] = None,
        database_url: Annotated[
            str | None,
            typer.Option(
                help="job database URL for SQLAlchemy, e.g. postgresql+psycopg://u@host/db "
                "(default: SQLite in --data-dir)"
            ),
        ] = None,
        ray: Annotated[
            str | None,
            typer.Option(
                help="run jobs as Ray tasks: 'local' (start Ray here), 'auto' (join the running "
                "cluster) or a cluster address; --data-dir must be shared by every node"
            ),
        ] = None,
        keys_file: Annotated[
            Path | None,
            typer.Option(help="API keys, 'name:key' per line (also $ALLOCATOR_API_KEYS)"),
        ] = None,
        max_body_bytes: int = typer.Option(64 * 1024 * 1024, help="largest request body"),
        max_table_cells: int = typer.Option(20_000_000, help="largest table (units x options)"),
        legacy: bool = typer.Option(False, "--legacy", help="the old stdlib server, no jobs"),
        quiet: bool = typer.Option(False, "--quiet", help="no request log"),
    ) -> None:
        """Serve the allocation API (/v1/solve, /v1/jobs, /docs, /metrics) over HTTP."""
        if legacy:
            _serve_legacy(host, port, quiet)
            return
        import uvicorn

        from allocator.serve.app import create_app
        from allocator.serve.config import ServeConfig, load_keys

        keys = load_keys(keys_file)
        if not keys and not _is_loopback(host):
            raise InputError(
                f"--host {host}: a non-loopback address needs API keys "
                "(--keys-file or $ALLOCATOR_API_KEYS)"
            )
        folders: dict[str, Any] = {"data_dir": data_dir} if data_dir else {}
        if data_root:
            folders["data_root"] = data_root
        config = ServeConfig(
            workers=workers, keys=keys, max_body_bytes=max_body_bytes, database_url=database_url, ray=ray,
            max_table_cells=max_table_cells, **folders,
        )  # fmt: skip
        typer.echo(
            f"allocator serving on http://{host}:{port} (docs at /docs; data in "
            f"{config.data_dir}; inputs from {config.root}; "
            f"{len(keys) or 'no'} API key{'s' if len(keys) != 1 else ''})"
        )
        uvicorn.run(
            create_app(config), host=host, port=port, log_level="warning" if quiet else "info",
            access_log=not quiet,
        )  # fmt: skip


def _serve_legacy(host: str, port: int, quiet: bool) -> None:
    from allocator.serve.legacy import make_server

    server = make_server(host, port, quiet=quiet)
    bound, port_number = server.server_address[:2]
    host_name = bound.decode() if isinstance(bound, bytes) else bound
    typer.echo(f"allocator serving on http://{host_name}:{port_number}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
