"""The ``raml`` Typer application: global options, error handling, command registry.

Each command lives in its own module of this package and is registered below
with :func:`register`, which wraps it so that a :class:`~raml_cli.errors.RamlError`
becomes a one-paragraph message on stderr and a non-zero exit, never a traceback.
Command modules import the heavy engine (torch) inside the command body, so
``raml --help`` and ``raml --version`` stay fast.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from raml_cli import __version__

app = typer.Typer(
    name="raml",
    help=(
        "Resolution-asymmetric deep metric learning: encode the database once with a large "
        "teacher at high resolution, encode queries fast with a distilled student at low "
        "resolution, and search by inner product.\n\n"
        "Pipeline: raml download toy -> raml train-teacher -> raml distill -> raml embed (x2) "
        "-> raml evaluate. `raml demo` runs all of it on the built-in toy dataset."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"raml {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True,
                     help="Print the version and exit."),
    ] = False,
) -> None:
    """raml: large-to-small image resolution asymmetry in deep metric learning."""


def report_error(message: str, exit_code: int = 2) -> typer.Exit:
    """Print ``message`` as one paragraph on stderr; return the Exit to raise."""
    from raml_cli.progress import stderr_console

    stderr_console().print(f"[bold red]error:[/bold red] {message}", highlight=False,
                           soft_wrap=True, markup=True)
    return typer.Exit(code=exit_code)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user-fixable errors and Ctrl-C into a message and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from raml_cli.errors import RamlError

        try:
            return fn(*args, **kwargs)
        except RamlError as err:
            raise report_error(_escape(str(err)), err.exit_code) from None
        except KeyboardInterrupt:
            raise report_error("interrupted. Completed work was kept: run the same command "
                               "again (with --resume where the command has it) to continue.",
                               130) from None

    return wrapper


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def register(name: str, fn: Callable[..., Any], examples: str = "", **kwargs: Any) -> None:
    """Register ``fn`` as ``raml NAME`` with error handling.

    ``--help`` shows ``fn``'s docstring, then ``examples`` (the command module's
    ``EXAMPLES``: command lines kept next to the command they show).
    """
    text = "\n\n".join(part for part in (inspect.getdoc(fn), examples.strip("\n")) if part)
    app.command(name=name, help=text, **kwargs)(handle_errors(fn))


def register_group(name: str, help_text: str, commands: list[tuple[str, Any, str]],
                   examples: str = "") -> None:
    """Register ``raml NAME SUB`` for each ``(SUB, fn, examples)`` of ``commands``."""
    group = typer.Typer(help="\n\n".join(p for p in (help_text, examples.strip("\n")) if p),
                        no_args_is_help=True, rich_markup_mode="markdown",
                        context_settings={"help_option_names": ["-h", "--help"]})
    for sub, fn, sub_examples in commands:
        text = "\n\n".join(part for part in (inspect.getdoc(fn), sub_examples.strip("\n"))
                           if part)
        group.command(name=sub, help=text)(handle_errors(fn))
    app.add_typer(group, name=name)


def _register_all() -> None:
    # One import and one register() line per command; each module defines `command` and
    # `EXAMPLES`.
    from raml_cli.cli import (
        demo,
        distill,
        download,
        embed,
        evaluate,
        export,
        import_,
        index,
        info,
        search,
        tradeoff,
        train_teacher,
    )

    for name, module in (("download", download), ("train-teacher", train_teacher),
                         ("embed", embed), ("info", info), ("evaluate", evaluate),
                         ("distill", distill), ("tradeoff", tradeoff), ("demo", demo),
                         ("index", index), ("search", search),
                         ("import", import_), ("export", export)):
        register(name, module.command, examples=module.EXAMPLES)
    from raml_cli.cli import log, tune

    register("log", log.command, examples=log.EXAMPLES)
    register_group("tune", tune.HELP, tune.COMMANDS, examples=tune.EXAMPLES)


_register_all()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except BrokenPipeError:  # `raml ... --json | head`
        sys.stderr.close()
        sys.exit(1)
