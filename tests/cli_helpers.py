"""Running the real command line through Typer's test runner, for the CLI tests."""

from __future__ import annotations

from typer.testing import CliRunner

from raml_cli.cli.app import app

runner = CliRunner()


def cli_ok(args):
    """Run ``raml ARGS``; assert it succeeded."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def cli_fails(args, match):
    """Run ``raml ARGS``; assert a usage error (exit 2) without a traceback whose message,
    whitespace folded, contains ``match``."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and match in " ".join(result.output.split())
    return result
