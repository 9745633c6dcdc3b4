"""``raml search``: find the database images nearest to query images (or query embeddings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raml_cli.cli.options import BatchSizeOpt, DeviceOpt, JsonOpt, QuietOpt, RootOpt

EXAMPLES = """
Examples:

    raml search student.safetensors --index db.index photo1.jpg photo2.jpg

    raml search student.safetensors --index db.index --images queries/ -k 5 --sheet out.png

    raml search --queries queries.h5 --index db.index --json

    raml export student.safetensors -o student.onnx --dynamic-batch
    raml search student.onnx --index db.index --images queries/
"""


def command(
    model: Annotated[Path | None, typer.Argument(
        help="The query model (.safetensors, or .onnx from `raml export`): the database's "
        "teacher or a student distilled from it. Not needed with --queries.",
        show_default=False)] = None,
    images: Annotated[list[Path] | None, typer.Argument(
        help="Query image files.", show_default=False)] = None,
    index: Annotated[Path, typer.Option("--index", help="An index file written by "
                                        "`raml index`.")] = ...,
    image_dir: Annotated[Path | None, typer.Option(
        "--images", help="Query images: a folder (recursive; the first sub-folder is the "
        "class) or a text file with one image path per line.")] = None,
    queries: Annotated[Path | None, typer.Option(
        "--queries", help="Query embeddings (.h5 from `raml embed`) instead of images; no "
        "model runs.")] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Results per query.")] = 10,
    res: Annotated[int | None, typer.Option(
        "--res", min=8, help="Query resolution in pixels. Default: the model's (an .onnx "
        "model takes only the resolution it was exported at).")] = None,
    runtime: Annotated[str, typer.Option(
        "--runtime", help="What runs the model: torch, onnxruntime (needs raml[onnx]; a "
        ".safetensors model is exported once, on first use, into $XDG_CACHE_HOME/raml/onnx, "
        "and that file is reused), or auto: onnxruntime on the CPU when the extra is "
        "installed (it is faster), torch on a GPU or without it.")] = "auto",
    nprobe: Annotated[int | None, typer.Option(
        "--nprobe", min=1, help="ivf/ivfpq: lists visited per query (more: slower, better). "
        "Default: the value `raml index` tuned.")] = None,
    ef: Annotated[int | None, typer.Option(
        "--ef", min=1, help="hnsw: efSearch, the candidate list of the graph walk. Default: "
        "the value `raml index` tuned.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Search even when the model was not distilled from the database's "
        "model (with a warning).")] = False,
    sheet: Annotated[Path | None, typer.Option(
        "--sheet", help="Also draw a contact sheet (.png/.jpg): each query, then its top-k "
        "with scores; green/red frames when labels match/differ.")] = None,
    db_root: Annotated[Path | None, typer.Option(
        "--db-root", help="For --sheet: the folder the database's paths are relative to. "
        "Default: found from the database's dataset.")] = None,
    root: RootOpt = Path("data"),
    batch_size: BatchSizeOpt = 32,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Search an index with query images encoded by a model, or with query embeddings.

    Prints, per query, the top-k database images (rank, score = inner product of unit rows,
    path, label), or one JSON object with --json. The model must share the database's
    embedding space: it is the database's model or a student distilled from it (checked from
    the files; --force overrides).
    """
    from raml_cli.errors import InputError
    from raml_cli.progress import Reporter

    reporter = Reporter(quiet=quiet)
    image_files = list(images or [])
    if queries is not None:
        if image_files or image_dir is not None or (model is not None and model.suffix
                                                    in (".safetensors", ".onnx")):
            raise InputError("--queries Q.h5 searches precomputed embeddings: give no model "
                             "and no images with it.")
        if model is not None:  # `raml search --queries q.h5 x.jpg`: the model slot holds it
            raise InputError(f"--queries Q.h5 takes no other inputs; got {model}.")
        from raml_cli.index.search import search_embeddings

        result = search_embeddings(queries, index, k=k, nprobe=nprobe, ef=ef,
                                   reporter=reporter)
        query_attrs = _attrs(queries)
    else:
        if model is None:
            raise InputError("Give the query model (MODEL.safetensors or MODEL.onnx) and "
                             "query images "
                             "(IMAGE..., or --images DIR), or --queries Q.h5.")
        if bool(image_files) == (image_dir is not None):
            raise InputError("Give query images either as files after the model or with "
                             "--images DIR|LIST.txt (one of the two).")
        from raml_cli.index.search import search_images

        image_root, samples = _query_samples(image_files, image_dir)
        result = search_images(model, index, samples, image_root, k=k, res=res,
                               nprobe=nprobe, ef=ef, device=device, batch_size=batch_size,
                               force=force, reporter=reporter, runtime=runtime)
        query_attrs = None
    if sheet is not None:
        from raml_cli.index.sheet import image_root_of, write_contact_sheet

        database_root = image_root_of(result.index["database"], root, db_root)
        if database_root is None:
            reporter.warn("the database's images were not found (its dataset is "
                          f"{result.index['database'].get('dataset')!r}); pass --db-root DIR "
                          "to show them on the sheet")
        query_root = result.query_root if query_attrs is None else \
            image_root_of(query_attrs, root, None)
        write_contact_sheet(result, sheet, database_root=database_root, query_root=query_root)
        reporter.log(f"wrote the contact sheet {sheet}")
    _render(result, json_output)


def _attrs(path: Path) -> dict:
    from raml_cli.store import read_attributes

    return read_attributes(path)


def _query_samples(files: list[Path], image_dir: Path | None):
    from raml_cli.data.dataset import Sample
    from raml_cli.embed import collect_images
    from raml_cli.errors import InputError

    if image_dir is not None:
        return collect_images(image_dir)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"No such image file: {', '.join(missing)}. Give existing image "
                         "files, or --images DIR.")
    return Path("."), [Sample(str(f), -1) for f in files]


def _render(result, json_output: bool) -> None:
    from raml_cli.cli.render import print_json, print_table

    if json_output:
        print_json(result.as_dict())
        return
    for query in result.queries:
        label = f" (label {query.label})" if query.label >= 0 else ""
        print_table(f"{query.path}{label}", ["rank", "score", "path", "label"],
                    [[h.rank, f"{h.score:.4f}", h.path, h.label if h.label >= 0 else "-"]
                     for h in query.results])
    timing = f"search {result.search_ms_per_query:.3f} ms/query"
    if result.encode_ms_per_query is not None:
        runtime = f" on {result.model['runtime']}" if result.model else ""
        timing = f"encode{runtime} {result.encode_ms_per_query:.1f} ms/query, " + timing
    params = ", ".join(f"{k}={v}" for k, v in result.search_params.items())
    from raml_cli.progress import stderr_console

    stderr_console().print(f"{len(result.queries)} queries, {result.index['kind']} index"
                           f"{f' ({params})' if params else ''}: {timing}", highlight=False)
