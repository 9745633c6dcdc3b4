"""Contact sheets of search results (``raml search --sheet results.png``), drawn with PIL.

One row per query: the query's thumbnail, then its top-k database thumbnails, each with
its rank and score. When both labels are known, a hit gets a green frame if its label is
the query's and a red one otherwise (grey when unknown). An image that cannot be found
or read becomes a grey tile saying so, rather than stopping the sheet.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from raml_cli.atomic import atomic_output
from raml_cli.errors import InputError
from raml_cli.index.search import SearchResult

GREEN, RED, GREY, BLUE = (30, 160, 60), (200, 40, 40), (150, 150, 150), (40, 90, 200)
FRAME, CAPTION, GAP = 4, 16, 6


def _thumbnail(path: Path | None, size: int) -> Image.Image:
    tile = Image.new("RGB", (size, size), (225, 225, 225))
    try:
        if path is None:
            raise OSError("no image root")
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((size, size))
            tile.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    except (OSError, ValueError):
        ImageDraw.Draw(tile).text((6, size // 2 - 6), "not found", fill=(90, 90, 90))
    return tile


def _resolve(root: Path | None, path: str) -> Path | None:
    if Path(path).is_absolute():
        return Path(path)
    return None if root is None else root / path


def write_contact_sheet(result: SearchResult, output: str | os.PathLike, *,
                        database_root: Path | None, query_root: Path | None,
                        thumb: int = 96) -> Path:
    """Draw ``result`` as a PNG/JPEG contact sheet at ``output`` (written atomically)."""
    if not result.queries:
        raise InputError("No queries to draw on a contact sheet.")
    suffix = Path(output).suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg"):
        raise InputError(f"--sheet {output}: give a .png or .jpg file name.")
    columns = 1 + max(len(q.results) for q in result.queries)
    cell_w, cell_h = thumb + 2 * FRAME + GAP, thumb + 2 * FRAME + CAPTION + GAP
    sheet = Image.new("RGB", (columns * cell_w + GAP, len(result.queries) * cell_h + GAP),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for row, query in enumerate(result.queries):
        y = GAP + row * cell_h
        cells = [(_resolve(query_root, query.path), BLUE, "query")]
        for hit in query.results:
            known = query.label >= 0 and hit.label >= 0
            colour = (GREEN if hit.label == query.label else RED) if known else GREY
            cells.append((_resolve(database_root, hit.path), colour,
                          f"{hit.rank}: {hit.score:.3f}"))
        for col, (path, colour, caption) in enumerate(cells):
            x = GAP + col * cell_w
            draw.rectangle([x, y, x + thumb + 2 * FRAME - 1, y + thumb + 2 * FRAME - 1],
                           fill=colour)
            sheet.paste(_thumbnail(path, thumb), (x + FRAME, y + FRAME))
            draw.text((x + FRAME, y + thumb + 2 * FRAME + 2), caption, fill=(0, 0, 0))
    with atomic_output(output) as tmp:
        sheet.save(tmp, format="PNG" if suffix == ".png" else "JPEG")
    return Path(output)


def image_root_of(attrs: dict, root: Path, given: Path | None) -> Path | None:
    """Where the images of an embeddings file are: ``given``, else its ``dataset``.

    ``dataset`` is a folder for ``raml embed --images DIR``, a registered dataset name
    (found under ``root``) or a dataset path; ``None`` when it cannot be found.
    """
    if given is not None:
        return given
    dataset = str(attrs.get("dataset") or "")
    if not dataset:
        return None
    from raml_cli.data.catalog import load_dataset
    from raml_cli.errors import RamlError

    try:
        return Path(load_dataset(dataset, root).root)
    except RamlError:
        return Path(dataset) if Path(dataset).is_dir() else None
