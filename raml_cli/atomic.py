"""No half-written files: write to a temporary name beside the target, then rename.

``os.replace`` within one folder is atomic on POSIX and Windows, so a reader sees
either the old file, or the complete new one, never a partial one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from raml_cli.errors import InputError


def ensure_writable_parent(path: str | os.PathLike) -> Path:
    """Create the parent folder of ``path`` if needed; fail clearly if it cannot be written."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise InputError(f"The output path {target} is a folder; give a file name, e.g. "
                         f"{target / 'out'}.")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"Cannot create the output folder {parent}: {err.strerror}. Choose "
                         "another output path.") from err
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"The output folder {parent} is not writable. Choose another output "
                         "path or fix its permissions.")
    return target


def temporary_sibling(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """A unique hidden name in the same folder as ``path`` (so the final rename is atomic)."""
    target = Path(path)
    return target.with_name(f".{target.name}.{tag}-{uuid.uuid4().hex[:8]}")


def partial_path(path: str | os.PathLike) -> Path:
    """The stable name of the in-progress file of a resumable output (``--resume`` finds it)."""
    target = Path(path)
    return target.with_name(f"{target.name}.partial")


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; rename it onto ``path`` only if the block succeeds.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_output(out) as tmp:
    ...     _ = tmp.write_text("done")
    >>> out.read_text()
    'done'
    """
    target = ensure_writable_parent(path)
    tmp = temporary_sibling(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
