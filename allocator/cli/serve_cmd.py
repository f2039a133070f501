"""``allocator serve``: run the solver as a JSON HTTP service."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        host: str = typer.Option("127.0.0.1", help="address to bind"),
        port: int = typer.Option(8765, help="port (0 picks a free one)"),
        quiet: bool = typer.Option(False, "--quiet", help="no request log"),
    ) -> None:
        """Serve /solve, /check, /pareto, /schema and /health as JSON over HTTP."""
        from allocator.serve.app import make_server

        server = make_server(host, port, quiet=quiet)
        typer.echo(
            f"allocator serving on http://{server.server_address[0]}:{server.server_address[1]}"
        )
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
