"""allocator run takes its options from RunSettings: every field, its description, its default."""

from __future__ import annotations

import typer
from pydantic import BaseModel, Field
from typer.main import get_command

import allocator.pipeline as pipeline
import allocator.report as report
from allocator.cli.main import app, main
from allocator.cli.settings_cli import flag, with_settings
from allocator.pipeline.settings import RunSettings


def _run_params() -> dict[str, object]:
    from allocator.cli import main as cli_main

    cli_main._register_commands()
    command = get_command(app).commands["run"]  # type: ignore[attr-defined]
    return {p.name: p for p in command.params}


def test_every_run_setting_is_an_option_with_its_description_and_default() -> None:
    params = _run_params()
    for name, field in RunSettings.model_fields.items():
        assert name in params, f"RunSettings.{name} has no allocator run option"
        param = params[name]
        assert flag(name) in param.opts or any(flag(name) in o for o in param.opts)
        assert field.description and field.description in (param.help or "")
        assert param.default == field.get_default(call_default_factory=True)


def test_run_builds_the_settings_it_is_given(monkeypatch, tmp_path) -> None:
    seen = {}

    def fake_run(settings, out, progress=True, log=print):
        seen["settings"] = settings
        return {"rows": []}

    monkeypatch.setattr(pipeline, "run", fake_run)
    monkeypatch.setattr(report, "report_run_folder", lambda out, log=None: None)
    argv = ["run", "--budget", "3", "--calib-text", "a.txt", "--calib-text", "b.txt",
            "--no-validate", "--bos", "--out", str(tmp_path), "-q"]  # fmt: skip
    assert main(argv) == 0
    expected = RunSettings(budget=3, calib_text=["a.txt", "b.txt"], validate_plan=False, bos=True)
    assert seen["settings"] == expected
    assert main(["run", "--out", str(tmp_path), "-q"]) == 0
    assert seen["settings"] == RunSettings()


def test_bad_values_are_input_errors_naming_the_option(capsys, tmp_path) -> None:
    assert main(["run", "--budget", "-1", "--out", str(tmp_path)]) == 2
    assert "--budget" in capsys.readouterr().err


def test_a_new_field_appears_without_touching_the_command() -> None:
    class Settings(BaseModel):
        windows: int = Field(default=4, ge=1, description="how many windows")
        fast: bool = Field(default=False, description="go fast")

    sub = typer.Typer()

    @sub.command()
    @with_settings(Settings)
    def go(settings: Settings, name: str = "x") -> None:
        typer.echo(f"{settings.windows} {settings.fast} {name}")

    @sub.callback()
    def _root() -> None:
        """group"""

    from typer.testing import CliRunner

    result = CliRunner().invoke(sub, ["go", "--windows", "7", "--fast", "--name", "y"])
    assert result.exit_code == 0 and result.output.strip() == "7 True y"
    assert "how many windows" in CliRunner().invoke(sub, ["go", "--help"]).output
