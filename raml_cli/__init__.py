"""raml: resolution-asymmetric deep metric learning.

A large *teacher* encodes the database at high resolution, a *student* of the
same architecture encodes queries fast at low resolution, and label-free
distillation makes the two vector spaces compatible (Suma and Tolias, WACV 2023).

The engine is usable as a library; the ``raml`` command line (``raml_cli.cli``)
is a thin layer over it.
"""

__version__ = "0.1.0"
