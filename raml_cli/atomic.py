"""No half-written files: write to a temporary name beside the target, then rename.

``os.replace`` within one folder is atomic on POSIX and Windows, so a reader sees
either the old file, or the complete new one, never a partial one. Also where raml keeps
the files it can make again (:func:`raml_cache_dir`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from raml_cli.errors import InputError


def raml_cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/raml/NAME`` (``~/.cache/raml/NAME`` by default): where raml keeps
    what it can make again (released models, ONNX exports)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "raml" / name


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


def ensure_folder(path: str | os.PathLike, option: str) -> Path:
    """Create the folder ``path`` (and its parents) or fail clearly when a file is in the way."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {folder} is a file, not a folder. Give a folder (it is "
                         "created when missing), or move the file away.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise InputError(f"Cannot create the folder {folder} for {option}: a part of its path "
                         "is a file. Choose another folder.") from err
    except OSError as err:
        raise InputError(f"Cannot create the folder {folder} for {option}: {err.strerror}. "
                         "Choose another folder or fix its permissions.") from err
    return folder


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file: the same path once resolved (also when
    neither exists yet), or the same inode (hard links, symbolic links, bind mounts)."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_outputs_apart(outputs: dict[str, str | os.PathLike],
                        inputs: dict[str, str | os.PathLike | None]) -> None:
    """Refuse, before any work, outputs that would overwrite an input or each other.

    Args:
        outputs: what a command writes, by what it is (``{"the model (-o)": path}``).
        inputs: what it reads, by what it is; ``None`` values are ignored.

    Raises:
        InputError: an output is one of the inputs, or two outputs are the same file.
    """
    named_outputs = list(outputs.items())
    for what, path in named_outputs:
        for in_what, in_path in inputs.items():
            if in_path is not None and same_file(path, in_path):
                raise InputError(
                    f"{what} {path} is the same file as {in_what} {in_path}: writing it would "
                    "destroy an input of this run. Choose another output path.")
    for i, (what, path) in enumerate(named_outputs):
        for other_what, other in named_outputs[i + 1:]:
            if same_file(path, other):
                raise InputError(
                    f"{what} {path} would be the same file as {other_what} {other}, so one "
                    "would overwrite or delete the other. Choose an output name with another "
                    "suffix (e.g. model.safetensors).")
