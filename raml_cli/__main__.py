"""``python -m raml_cli`` runs the ``raml`` command line."""

from raml_cli.cli.app import main

if __name__ == "__main__":
    main()
