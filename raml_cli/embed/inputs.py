"""What ``raml embed`` encodes: a dataset split, an image folder, or a list of images.

``--images DIR`` takes every image under ``DIR`` (recursively, sorted by path);
``--images LIST.txt`` takes one path per line (relative to the list's folder or
absolute; blank lines and ``#`` comments are skipped), in the list's order.

Labels come from folder names, so a query folder and a database folder embedded
separately get the same class ids:

- an image directly in ``DIR`` (or a list entry without a folder) gets ``-1`` (unknown);
- otherwise the class is the first folder under ``DIR`` (for a list: the image's parent
  folder). When every class name is an integer or starts with one (``017``,
  ``001.Black_footed_Albatross``), that integer is the class id; otherwise the id is a
  stable 62-bit hash of the folder name (:func:`class_id`), the same in every run.

Only regular files are images (a FIFO or a device named ``x.jpg`` is not read: it would
block). Symbolic links to files and folders are followed, but each folder is read once:
a link to a folder already seen (a loop such as ``l -> ..``, or a second link to the same
folder) is not entered again, so a loop cannot hang the scan or repeat its images. A
file name that is not valid UTF-8 cannot be stored in an embeddings file: it is left out
with a warning naming it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from raml_cli.data.dataset import Sample
from raml_cli.errors import InputError
from raml_cli.progress import NULL_REPORTER, Reporter

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pbm", ".jfif")
_LEADING_INT = re.compile(r"^(\d+)")


def class_id(name: str) -> int:
    """A stable non-negative class id for a folder name (62 bits of its BLAKE2b hash)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2


def _labels_for(names: list[str | None]) -> list[int]:
    classes = sorted({n for n in names if n is not None})
    numbers = {n: _LEADING_INT.match(n) for n in classes}
    numeric = all(numbers.values()) and \
        len({int(m.group(1)) for m in numbers.values() if m}) == len(classes)
    mapping = {n: (int(numbers[n].group(1)) if numeric else class_id(n)) for n in classes}
    return [-1 if n is None else mapping[n] for n in names]


def _folder_key(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:  # a dangling link
        return None
    return info.st_dev, info.st_ino


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by Python as lone surrogates
        return False
    return True


def images_in_folder(folder: Path, reporter: Reporter = NULL_REPORTER) -> list[Sample]:
    """Every image under ``folder`` (recursive, sorted), labelled by its top sub-folder.

    Regular files only; every folder is read once (links that loop are not followed
    again); names that are not UTF-8 are left out with a warning (module docstring).
    """
    paths: list[str] = []
    seen = {_folder_key(str(folder))}
    not_utf8: list[str] = []
    for current, dirs, files in os.walk(folder, followlinks=True):
        kept = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            key = _folder_key(os.path.join(current, d))
            if key is not None and key not in seen:
                seen.add(key)
                kept.append(d)
        dirs[:] = kept
        for name in files:
            if not (name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")):
                continue
            full = os.path.join(current, name)
            if not os.path.isfile(full):  # a FIFO, a socket, a device or a dangling link
                continue
            relative = Path(full).relative_to(folder).as_posix()
            if _is_utf8(relative):
                paths.append(relative)
            else:
                not_utf8.append(relative)
    for name in not_utf8:
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        reporter.warn(f"left out {shown}: its name is not valid UTF-8 (rename the file to "
                      "include it).")
    paths.sort()
    if not paths:
        raise InputError(f"No images under {folder} (looked for {', '.join(IMAGE_SUFFIXES)}, "
                         "recursively). Point --images at a folder of images or a text file "
                         "listing them.")
    names = [p.split("/")[0] if "/" in p else None for p in paths]
    return [Sample(p, label) for p, label in zip(paths, _labels_for(names), strict=True)]


def images_in_list(list_file: Path) -> list[Sample]:
    """The images named in a text file, one per line, labelled by their parent folder."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"Cannot read the image list {list_file}: {err}. It must be a UTF-8 "
                         "text file with one image path per line.") from err
    entries = [line.strip() for line in lines]
    entries = [e for e in entries if e and not e.startswith("#")]
    if not entries:
        raise InputError(f"The image list {list_file} names no images (one path per line; "
                         "# starts a comment).")
    names = [Path(e).parent.name or None for e in entries]
    return [Sample(e, label) for e, label in zip(entries, _labels_for(names), strict=True)]


def collect_images(spec: str | os.PathLike,
                   reporter: Reporter = NULL_REPORTER) -> tuple[Path, list[Sample]]:
    """Resolve ``--images DIR`` or ``--images LIST.txt`` to ``(root, samples)``.

    Sample paths are relative to ``root`` (the folder, or the list's folder; absolute
    paths in a list stay absolute).
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return path, images_in_folder(path, reporter)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return path.parent, [Sample(path.name, -1)]
        return path.parent, images_in_list(path)
    raise InputError(f"--images {spec}: no such folder or file. Give a folder of images "
                     "(searched recursively) or a text file with one image path per line.")
