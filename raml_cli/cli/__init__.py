"""The ``raml`` command line: thin Typer commands over the engine (the only Typer code)."""
