"""``raml download``'s engine: get a catalogue dataset onto disk, verified, or not at all.

The steps, for ``ROOT/NAME``:

1. Already verified (the marker ``ROOT/NAME/raml-dataset.json`` is there and the
   annotations still give the counts it records; for a generated dataset, the same
   seed)? Nothing to do.
2. Otherwise get the data into a fresh temporary folder ``ROOT/.NAME.staging-XXXX``:
   generate it (``toy``); or extract the user's ``--archive`` files (md5-checked unless
   ``--no-verify``); or download a release (:mod:`raml_cli.data.download`, archives kept
   in ``ROOT/.downloads`` until the dataset is complete) and extract it
   (:mod:`raml_cli.data.extract`). An ``--archive`` that is an already extracted folder is
   verified where it is and not copied: the marker records its path.
3. Verify: parse the layout, compare the class and image counts of each split with
   the catalogue's (for a generated dataset, with the image files it wrote), and check
   that every listed image exists.
4. Write the marker into the temporary folder, last, and rename the folder to
   ``ROOT/NAME``. Any error before that deletes the temporary folder.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from raml_cli.atomic import ensure_folder
from raml_cli.data.catalog import (
    DatasetSpec,
    Release,
    RemoteFile,
    dataset_dir,
    download_command,
    get_spec,
    load_verified,
    splits_from_parsed,
)
from raml_cli.data.dataset import DatasetSplits
from raml_cli.data.download import download_file, file_md5
from raml_cli.data.extract import is_archive, safe_extract
from raml_cli.data.marker import has_marker, read_marker, write_marker
from raml_cli.data.parsers import IMAGE_SUFFIXES, ParsedDataset, check_images_exist
from raml_cli.errors import DataError, DownloadError, InputError, RamlError
from raml_cli.progress import NULL_REPORTER, Reporter
from raml_cli.seeding import check_seed

DOWNLOADS = ".downloads"


def prepare_dataset(name: str, root: Path = Path("data"), archives: Sequence[Path] = (),
                    verify: bool = True, seed: int = 0, reporter: Reporter | None = None,
                    *, timeout: float = 30.0, mirrors: Mapping[str, Sequence[str]] | None = None
                    ) -> DatasetSplits:
    """Make ``ROOT/NAME`` a complete, verified dataset and return its splits.

    Args:
        name: a catalogue name (``toy``, ``cub200``, ``cars196``, ``sop``).
        root: the folder holding the datasets.
        archives: files the user already has (release archives, ``.mat`` files, a mirror's
            archive) or one already extracted folder. Empty: download (or generate).
        verify: check the md5 of archives (``False`` for repacked copies: the layout and
            the image counts are still verified).
        seed: the seed of a generated dataset (``toy``); a different seed regenerates it.
        reporter: progress bars and status lines.
        timeout: seconds an HTTP connection may stay silent.
        mirrors: file name -> URLs to use instead of the catalogue's (tests, local mirrors).

    Returns:
        The dataset's splits, as :func:`raml_cli.data.catalog.load_dataset` gives them.

    Raises:
        DownloadError: no URL delivered a release (the message says which files to fetch
            by hand and the ``--archive`` command that ingests them).
        DataError: an archive is corrupt or unsafe, or the data has the wrong layout or
            counts, or ``ROOT/NAME`` holds something else.
        InputError: options that do not fit the dataset.
    """
    reporter = reporter or NULL_REPORTER
    spec = get_spec(name)
    root = Path(root)
    archives = [Path(a).expanduser() for a in archives]
    if spec.generate is not None and archives:
        raise InputError(f"{name} is generated locally; --archive does not apply. Run "
                         f"`{download_command(name, root)}` (with --seed to choose the seed).")
    check_seed(seed)
    ensure_folder(root, "--root")
    ready = _already_verified(spec, root, seed, reporter)
    if ready is not None:
        if archives:
            reporter.log(f"{name} is already verified in {dataset_dir(name, root)}; the "
                         "--archive files were not needed.")
        return ready
    with _exclusive(spec, root):
        ready = _already_verified(spec, root, seed, NULL_REPORTER)  # done by another run?
        if ready is not None:
            return ready
        _remove_leftovers(spec, root)
        if len(archives) == 1 and archives[0].is_dir():
            return _adopt_folder(spec, root, archives[0], reporter)
        _check_target_free(spec, root)
        if spec.generate is not None:
            return _generate(spec, root, seed, reporter)
        if archives:
            return _ingest_files(spec, root, archives, verify, reporter)
        return _download(spec, root, verify, reporter, timeout, mirrors or {})


@contextmanager
def _exclusive(spec: DatasetSpec, root: Path) -> Iterator[None]:
    """One ``raml download NAME`` at a time per root (POSIX ``flock``; a no-op elsewhere)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks in the standard library
        yield
        return
    lock = root / f".{spec.name}.lock"
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"Another `raml download {spec.name}` is working on "
                            f"{dataset_dir(spec.name, root)} (it holds {lock}). Wait for it "
                            "to finish, then run again.") from None
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(spec: DatasetSpec, root: Path) -> None:
    """Temporary folders of an earlier run that was killed (we hold the lock: none is live)."""
    for pattern in (f".{spec.name}.staging-*", f"..{spec.name}.staging-*",
                    f".{spec.name}.old-*"):
        for path in root.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def _already_verified(spec: DatasetSpec, root: Path, seed: int,
                      reporter: Reporter) -> DatasetSplits | None:
    marker = read_marker(dataset_dir(spec.name, root), spec.name)
    if marker is None:
        return None
    if spec.generate is not None and marker.get("seed") != seed:
        reporter.log(f"{spec.name} in {dataset_dir(spec.name, root)} was generated with seed "
                     f"{marker.get('seed')}; generating it with seed {seed}.")
        return None
    try:
        splits = load_verified(spec.name, root)
    except DataError as err:
        reporter.warn(f"{err} Fetching it again.")
        return None
    reporter.log(f"{spec.name} is already downloaded and verified in "
                 f"{dataset_dir(spec.name, root)}.")
    return splits


def _check_target_free(spec: DatasetSpec, root: Path) -> None:
    """``ROOT/NAME`` may be replaced only if it is absent, empty, or ours (has a marker)."""
    folder = dataset_dir(spec.name, root)
    if not folder.exists() or has_marker(folder):
        return
    if folder.is_dir() and not any(folder.iterdir()):
        return
    raise DataError(f"{folder} already exists and is not a dataset verified by raml. If it "
                    "holds the extracted dataset, verify it where it is with "
                    f"`{download_command(spec.name, root, f' --archive {folder}')}`"
                    f"; otherwise move or delete it, then run `{download_command(spec.name, root)}`"
                    " again.")


def _staging(spec: DatasetSpec, root: Path, create: bool = True) -> Path:
    """A fresh temporary folder beside ``ROOT/NAME`` (same file system: the rename is atomic)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f".{spec.name}.staging-{uuid.uuid4().hex[:8]}"
    if create:
        path.mkdir()
    return path


def _generate(spec: DatasetSpec, root: Path, seed: int, reporter: Reporter) -> DatasetSplits:
    staging = _staging(spec, root, create=False)  # the generator creates its folder
    try:
        reporter.log(f"generating {spec.name} (seed {seed}) in {dataset_dir(spec.name, root)}")
        assert spec.generate is not None
        spec.generate(staging, seed, reporter)
        parsed = _verify(spec, staging, staging)
        listed = {(parsed.image_root / s.path).resolve() for s in parsed.train + parsed.test}
        on_disk = {p.resolve() for p in parsed.image_root.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES}
        if listed != on_disk:
            raise DataError(f"The generated {spec.name} lists {len(listed)} images but wrote "
                            f"{len(on_disk)}; this is a bug in its generator, please report it.")
        return _finish(spec, root, staging, staging, parsed,
                       {"checksums": "not applicable (generated)", "seed": seed})
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _adopt_folder(spec: DatasetSpec, root: Path, folder: Path,
                  reporter: Reporter) -> DatasetSplits:
    """Verify an already extracted copy where it is; the marker points to it.

    A folder at or inside ``ROOT/NAME`` gets the marker written into ``ROOT/NAME`` itself
    (nothing is moved); any other folder is recorded by its absolute path.
    """
    reporter.log(f"verifying the extracted {spec.name} in {folder}")
    target = dataset_dir(spec.name, root)
    real, target_real = folder.resolve(), target.resolve()
    if real == target_real or target_real in real.parents:
        parsed = _verify(spec, real, folder)
        _mark(target, spec, real.relative_to(target_real).as_posix(), parsed,
              {"checksums": "not applicable (extracted folder: layout and image "
               "counts verified)"})
        return load_verified(spec.name, root)
    _check_target_free(spec, root)
    staging = _staging(spec, root)
    try:
        parsed = _verify(spec, folder.resolve(), folder)
        return _finish(spec, root, staging, folder.resolve(), parsed,
                       {"checksums": "not applicable (extracted folder: layout and image "
                        "counts verified)", "sources": [str(folder.resolve())]})
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _known_files(spec: DatasetSpec) -> dict[str, RemoteFile]:
    return {f.name: f for release in spec.releases for f in release.files}


def _ingest_files(spec: DatasetSpec, root: Path, archives: list[Path], verify: bool,
                  reporter: Reporter) -> DatasetSplits:
    missing = [str(a) for a in archives if not a.is_file()]
    if missing:
        raise InputError(f"--archive {missing[0]} does not exist (or is a folder given "
                         "together with files). Give existing archive files, or one extracted "
                         "folder on its own.")
    known = _known_files(spec)
    if verify:
        _verify_user_files(spec, root, archives, known, reporter)
    staging = _staging(spec, root)
    try:
        for path in archives:
            _place(path, staging, reporter)
        parsed = _verify(spec, staging, staging)
        how = "md5 verified" if verify else "not checked (--no-verify)"
        return _finish(spec, root, staging, staging, parsed,
                       {"checksums": how, "sources": [str(a) for a in archives]})
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _verify_user_files(spec: DatasetSpec, root: Path, archives: list[Path],
                       known: dict[str, RemoteFile], reporter: Reporter) -> None:
    names = {a.name for a in archives}
    unknown = sorted(names - set(known))
    if unknown:
        raise DataError(f"{unknown[0]} is not a file of {spec.name}'s releases (known: "
                        f"{', '.join(known)}), so its checksum cannot be verified. If it is a "
                        "repacked copy or a mirror's archive, add --no-verify: its layout and "
                        "image counts are still verified.")
    if not any(names >= {f.name for f in release.files} for release in spec.releases):
        raise DataError(f"The files given ({', '.join(sorted(names))}) are not a complete "
                        f"release of {spec.name}. {_releases_text(spec, root)}")
    for path in archives:
        expected = known[path.name].md5
        if expected is None:
            continue
        actual = file_md5(path, reporter)
        if actual != expected:
            raise DataError(f"{path} has md5 {actual}, not the official {expected}: it is "
                            "damaged, incomplete or repacked. Fetch it again, or pass "
                            "--no-verify if it is a repacked copy you trust (the layout and "
                            "image counts are still verified).")


def _place(path: Path, staging: Path, reporter: Reporter) -> None:
    """Extract an archive into ``staging``; copy any other file (``.mat``) there."""
    if is_archive(path):
        reporter.log(f"extracting {path.name}")
        safe_extract(path, staging, reporter)
    else:
        shutil.copy2(path, staging / path.name)


def _download(spec: DatasetSpec, root: Path, verify: bool, reporter: Reporter, timeout: float,
              mirrors: Mapping[str, Sequence[str]]) -> DatasetSplits:
    if not spec.releases:
        raise InputError(f"{spec.name} has no download source.")
    downloads = root / DOWNLOADS
    failures = []
    for release in spec.releases:
        try:
            files = _download_release(release, downloads, verify, reporter, timeout, mirrors)
        except DownloadError as err:
            failures.append(str(err))
            if len(spec.releases) > 1:
                reporter.warn(f"the {release.name} release of {spec.name} is unavailable; "
                              "trying the next.")
            continue
        staging = _staging(spec, root)
        try:
            for path in files:
                _place(path, staging, reporter)
            parsed = _verify(spec, staging, staging)
            how = "md5 verified" if verify else "not checked (--no-verify)"
            splits = _finish(spec, root, staging, staging, parsed,
                             {"checksums": how, "sources": [f.name for f in release.files]})
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for path in files:  # complete and verified: the archives are no longer needed
            path.unlink(missing_ok=True)
        _remove_if_empty(downloads)
        return splits
    raise DownloadError(f"{' '.join(failures)} {_releases_text(spec, root)}")


def _download_release(release: Release, downloads: Path, verify: bool, reporter: Reporter,
                      timeout: float, mirrors: Mapping[str, Sequence[str]]) -> list[Path]:
    files = []
    for remote in release.files:
        urls = tuple(mirrors.get(remote.name, remote.urls))
        reporter.log(f"downloading {remote.name}"
                     + (f" ({remote.size / 2**30:.2f} GiB)" if remote.size else ""))
        files.append(download_file(urls, downloads / remote.name,
                                   md5=remote.md5 if verify else None,
                                   size=remote.size if verify else None,
                                   reporter=reporter, timeout=timeout))
    return files


def _releases_text(spec: DatasetSpec, root: Path) -> str:
    """Which files to fetch by hand, and the exact commands that ingest them."""
    ways = []
    for release in spec.releases:
        listing = ", ".join(f"{f.name} (md5 {f.md5})" if f.md5 else f.name
                            for f in release.files)
        args = "".join(f" --archive {f.name}" for f in release.files)
        ways.append(f"{listing}, then `{download_command(spec.name, root, args)}`")
    if spec.manual_hint:
        ways.append(spec.manual_hint)
    lead = "Fetch by hand" if len(ways) == 1 else "Fetch by hand either"
    return f"{lead} " + "; or ".join(ways) + (f" (see {spec.homepage})." if spec.homepage
                                              else ".")


def _verify(spec: DatasetSpec, folder: Path, shown: Path) -> ParsedDataset:
    """Parse ``folder``, compare the counts with the catalogue's and check the images."""
    try:
        parsed = spec.parse(folder)
    except DataError as err:
        raise DataError(f"{shown} is not a complete {spec.name}: {err}") from err
    if spec.expected is not None:
        found = parsed.counts()
        for split, want in spec.expected.items():
            classes, images = found[split]
            if (classes, images) != (want.classes, want.images):
                raise DataError(
                    f"{shown} does not hold the complete {spec.name}: its {split} split has "
                    f"{images:,} images of {classes:,} classes, the official one "
                    f"{want.images:,} of {want.classes:,}. The copy is incomplete or a "
                    "different version; fetch the official files.")
    check_images_exist(parsed.image_root, parsed.train + parsed.test, f"{spec.name} in {shown}",
                       "The copy is incomplete: fetch or extract it again.")
    return parsed


def _finish(spec: DatasetSpec, root: Path, staging: Path, data_dir: Path,
            parsed: ParsedDataset, details: dict) -> DatasetSplits:
    """Write the marker last, then move the staging folder to ``ROOT/NAME``."""
    target = dataset_dir(spec.name, root)
    data_dir_text = "." if data_dir == staging else str(data_dir)
    _mark(staging, spec, data_dir_text, parsed, details)
    trash = None
    if target.exists():
        trash = root / f".{spec.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, trash)
    os.replace(staging, target)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    try:
        return load_verified(spec.name, root)
    except RamlError as err:  # the folder just verified must load; anything else is a bug
        raise DataError(f"{target} was verified but does not load: {err}") from err


def _mark(folder: Path, spec: DatasetSpec, data_dir: str, parsed: ParsedDataset,
          details: dict) -> None:
    """The marker: what was verified, how, and where the data is (relative or absolute)."""
    write_marker(folder, spec.name, data_dir=data_dir, layout=parsed.layout,
                 splits=splits_from_parsed(spec.name, parsed).summary(), details=details)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
