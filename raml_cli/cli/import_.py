"""``raml import``: the reference implementation's released models as raml model files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raml_cli.cli.options import JsonOpt, QuietOpt

EXAMPLES = """
Examples:

    raml import --list
    raml import cub-448r-resnet50-512-gem-w
    raml import cub-S224r-T448r-resnet50-512-gem-w \\
        --teacher cub-448r-resnet50-512-gem-w.safetensors
    raml import ~/Downloads/my-teacher.pth -o teacher.safetensors \\
        --role teacher --res 448 --dataset cub200
"""


def command(
    source: Annotated[str | None, typer.Argument(
        help="A released model's name (see --list; downloaded and cached) or the path of a "
        "local .pth checkpoint of the reference implementation.", metavar="NAME|FILE.pth",
        show_default=False)] = None,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="The raml model file to write; default: NAME.safetensors in "
        "the working folder.")] = None,
    role: Annotated[str | None, typer.Option(
        "--role", help="teacher or student; default: what the name says.")] = None,
    res: Annotated[int | None, typer.Option(
        "--res", min=1, help="The resolution it was trained at (pixels); default: what the "
        "name says (448r: 448; S224r-T448r: 224).")] = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="The dataset it was trained on (cub200, cars196, sop or your "
        "data's path); default: what the name says (cub, cars, sop).")] = None,
    teacher: Annotated[Path | None, typer.Option(
        "--teacher", help="For a student: the raml model file of its teacher (an imported "
        "released teacher), recorded so that the student searches that teacher's "
        "database.")] = None,
    cache: Annotated[Path | None, typer.Option(
        "--cache", help="Where downloaded checkpoints are kept (a download resumes there); "
        "default: $XDG_CACHE_HOME/raml/released, else ~/.cache/raml/released.",
        show_default=False)] = None,
    mirror: Annotated[list[str] | None, typer.Option(
        "--mirror", help="A base URL holding NAME.pth, tried before the reference's own "
        "server. Repeat for several.")] = None,
    list_models: Annotated[bool, typer.Option(
        "--list", help="Show the released models and exit.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Convert a released model of the paper's code (or a local copy) into a raml model file.

    The checkpoint is read weights-only (a file that needs anything beyond tensors, plain
    containers and numbers is refused, never executed) and its tensors are mapped one to
    one onto raml's network: any tensor left over, missing or of another shape is an
    error. The reference publishes no checksums, so the layout is what is verified. The
    result works with every command: `raml embed`, and `raml distill --teacher` to distil
    your own student from a released teacher without training one.
    """
    from raml_cli.cli.render import print_json, print_table
    from raml_cli.errors import InputError
    from raml_cli.model.reference import CATALOGUE, import_reference
    from raml_cli.progress import Reporter

    if list_models:
        entries = [m.as_dict() for m in CATALOGUE.values()]
        if json_out:
            print_json({"models": entries})
            return
        print_table("Released models of the reference implementation",
                    ["name", "role", "res", "dataset", "teacher"],
                    [[e["name"], e["role"], e["resolution"], e["dataset"], e["teacher"] or ""]
                     for e in entries],
                    caption="ResNet-50, GeM, whitening 512; from "
                    "http://ptak.felk.cvut.cz/personal/sumapave/public/NAME.pth. Size and md5 "
                    "are not published: the import verifies the layout instead.")
        return
    if source is None:
        raise InputError("Give a released model's name or a local .pth file to import, or "
                         "--list to see the released models (e.g. `raml import "
                         "cub-448r-resnet50-512-gem-w`).")
    result = import_reference(source, output, role=role, resolution=res, dataset=dataset,
                              teacher=teacher, cache_dir=cache, mirrors=tuple(mirror or ()),
                              reporter=Reporter(quiet=quiet))
    if json_out:
        print_json(result.as_dict())
        return
    info = result.info
    print_table(f"imported {result.source.name}", ["", ""], [
        ["model file", str(result.output)], ["role", info.role],
        ["resolution", str(info.resolution)], ["dataset", info.dataset],
        ["network", f"{info.architecture}, {info.pooling}, whitening {info.whitening}"],
        ["embedding", f"{info.embedding_dim}-d"], ["sha256", info.sha256[:16]]])
