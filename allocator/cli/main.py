"""The ``allocator`` command: subcommands live in one module each and register on ``app``.

User errors (AllocatorError) print one line and exit with the error's code; anything else is an
internal error (exit 70) and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import click
import typer

from allocator.errors import INTERNAL_ERROR_EXIT_CODE, AllocatorError

app = typer.Typer(
    name="allocator",
    help="Choose bit widths and sparsity per layer under a size budget, then apply the plan.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module defines ``register(app)``; adding a command is adding a module and a line here.
COMMAND_MODULES = [
    "allocator.cli.solve_cmds",
    "allocator.cli.serve_cmd",
    "allocator.cli.run_cmd",
    "allocator.cli.profile_cmd",
    "allocator.cli.export_cmd",
    "allocator.cli.apply_cmds",
    "allocator.cli.report_cmd",
    "allocator.cli.list_cmds",
]


def _register_commands() -> None:
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(app)


@app.callback()
def _root() -> None:
    """Choose bit widths and sparsity per layer under a size budget, then apply the plan."""


def _is_usage_error(exc: Exception) -> bool:
    module = type(exc).__module__
    return hasattr(exc, "show") and (module.startswith("click") or module.startswith("typer"))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    from allocator.models import quiet_library_logs

    quiet_library_logs()  # before any command imports transformers (see allocator.models)
    _register_commands()
    try:
        result = app(args=argv, standalone_mode=False)
    except AllocatorError as exc:
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except (click.exceptions.Exit, typer.Exit) as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except (click.exceptions.Abort, typer.Abort):
        typer.echo("aborted", err=True)
        return 130
    except Exception as exc:
        if _is_usage_error(exc):  # bad flags or arguments: click/typer print their own message
            exc.show()  # type: ignore[attr-defined]
            return 2
        # an internal bug: keep the traceback for the report
        traceback.print_exc()
        typer.echo(
            "internal error: this is a bug in allocator; please report it with the traceback above",
            err=True,
        )
        return INTERNAL_ERROR_EXIT_CODE
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
