"""Hostile and careless inputs (issue 15): each case once, as a user would meet it.

Every test builds a tiny real input (a random-weight ``test_resnet`` model, a handful of
small JPEGs, hand-made HDF5 files and archives) and asserts what the user sees: a
one-paragraph message and exit code 2 (or the documented behaviour), no traceback, and
no file under an output's final name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from raml_cli.cli.app import app
from raml_cli.data.custom import load_custom
from raml_cli.data.dataset import Sample
from raml_cli.data.extract import UnsafeArchiveError, safe_extract
from raml_cli.data.images import load_rgb
from raml_cli.data.toy import generate_toy
from raml_cli.embed.engine import embed_dataset
from raml_cli.embed.inputs import images_in_folder
from raml_cli.errors import DataError, FormatError, InputError
from raml_cli.model.files import file_sha256, load_model, read_model_info, save_model
from raml_cli.model.network import NetworkConfig, build_network
from raml_cli.store import read_embeddings

runner = CliRunner()
RES = 32
TINY_TEACHER = ["--arch", "test_resnet", "--no-pretrained", "--dim", "16", "--res", str(RES),
                "--batch-size", "8", "--negatives", "2", "--pool-size", "64", "--workers", "0",
                "--device", "cpu", "--epochs", "1", "--images-per-epoch", "8", "--quiet"]


def _invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output
    return result


def _save(path: Path, network=None, **overrides) -> Path:
    if network is None:
        torch.manual_seed(0)
        network = build_network(NetworkConfig("test_resnet", whitening=16))
    return save_model(path, network, resolution=overrides.pop("resolution", RES),
                      role="teacher", dataset="toy", config={"res": RES}, **overrides)


def _rewrite_metadata(source: Path, dest: Path, **changes: str) -> Path:
    """A copy of a model file with some metadata values replaced (as an editor would)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    metadata.update(changes)
    save_file(tensors, str(dest), metadata=metadata)
    return dest


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(tmp_path_factory.mktemp("model") / "teacher.safetensors")


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("data") / "toy"
    generate_toy(dest, seed=0, num_classes=6, images_per_class=4, min_side=36, max_side=44)
    return dest


def _images(root: Path, per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for name in ("001.crow", "002.gull"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            array = rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)
            Image.fromarray(array).save(root / name / f"img{i}.jpg")
    return root


def _in_thread(fn, seconds: float = 20.0):
    """Run ``fn`` with a deadline: a hang fails the test instead of blocking the suite."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 (handed back to the test)
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (hangs)"
    if "error" in box:
        raise box["error"]
    return box["value"]


# -- 1. the checkpoint (or the log) is the output --------------------------------------------

def test_case01_train_output_that_is_its_own_checkpoint_is_refused(toy: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "t.ckpt"
    result = _invoke("train-teacher", "--dataset", str(toy), "-o", str(out), *TINY_TEACHER)
    assert result.exit_code == 2 and "checkpoint" in result.output
    assert not out.exists()


def test_case01_distill_output_that_is_its_own_checkpoint_is_refused(model: Path, toy: Path,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "s.ckpt"
    result = _invoke("distill", "--teacher", str(model), "--dataset", str(toy), "--query-res",
                     "16", "-o", str(out), "--epochs", "1", "--workers", "0", "--device", "cpu")
    assert result.exit_code == 2 and "checkpoint" in result.output
    assert not out.exists()


# -- 2. an output that is an input -----------------------------------------------------------

def test_case02_embed_over_its_model_is_refused_also_through_a_link(model: Path,
                                                                   tmp_path: Path) -> None:
    images = _images(tmp_path / "images")
    copy = tmp_path / "m.safetensors"
    copy.write_bytes(model.read_bytes())
    link = tmp_path / "link.h5"
    link.symlink_to(copy)
    before = file_sha256(copy)
    for output in (copy, link):
        result = _invoke("embed", str(copy), "--images", str(images), "-o", str(output),
                         "--device", "cpu", "--quiet")
        assert result.exit_code == 2 and "same file" in result.output
    assert file_sha256(copy) == before


def test_case02_embed_over_one_of_its_images_is_refused(model: Path, tmp_path: Path) -> None:
    images = _images(tmp_path / "images")
    victim = images / "001.crow" / "img0.jpg"
    before = victim.read_bytes()
    result = _invoke("embed", str(model), "--images", str(images), "-o", str(victim),
                     "--device", "cpu", "--quiet")
    assert result.exit_code == 2 and "one of the images" in result.output
    assert victim.read_bytes() == before


def test_case02_distill_over_its_teacher_is_refused(model: Path, toy: Path,
                                                   tmp_path: Path) -> None:
    teacher = tmp_path / "t.safetensors"
    teacher.write_bytes(model.read_bytes())
    hard = tmp_path / "hard.safetensors"
    os.link(teacher, hard)
    before = file_sha256(teacher)
    for output in (teacher, hard):
        result = _invoke("distill", "--teacher", str(teacher), "--dataset", str(toy),
                         "--query-res", "16", "-o", str(output), "--epochs", "1",
                         "--workers", "0", "--device", "cpu")
        assert result.exit_code == 2 and "same file" in result.output
    assert file_sha256(teacher) == before


def test_case02_train_teacher_over_its_csv_is_refused(toy: Path, tmp_path: Path) -> None:
    csv = tmp_path / "data.csv"
    lines = [f"{p.relative_to(tmp_path.parent).as_posix()},{p.parent.name}"
             for p in sorted((toy / "images").rglob("*.jpg"))]
    csv.write_text("\n".join(f"../{line}" for line in lines) + "\n")
    before = csv.read_text()
    result = _invoke("train-teacher", "--dataset", str(csv), "-o", str(csv), *TINY_TEACHER)
    assert result.exit_code == 2 and "same file" in result.output
    assert csv.read_text() == before


# -- 3. NaN weights, NaN metadata ------------------------------------------------------------

def test_case03_non_finite_or_non_positive_normalisation_is_refused_on_load(
        model: Path, tmp_path: Path) -> None:
    for key, value in (("mean", '["NaN", 0.5, 0.5]'), ("std", "[0.2, 0.0, 0.2]"),
                       ("std", '[0.2, "Infinity", 0.2]')):
        edited = _rewrite_metadata(model, tmp_path / f"{key}.safetensors", **{key: value})
        with pytest.raises(FormatError, match=key):
            read_model_info(edited)
        with pytest.raises(FormatError, match=key):
            load_model(edited)


def test_case03_nan_weights_stop_embed_naming_the_first_image(tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = build_network(NetworkConfig("test_resnet", whitening=16))
    with torch.no_grad():
        network.whitening.weight.fill_(float("nan"))
    nan_model = _save(tmp_path / "nan.safetensors", network)
    images = _images(tmp_path / "images")
    out = tmp_path / "out.h5"
    result = _invoke("embed", str(nan_model), "--images", str(images), "-o", str(out),
                     "--device", "cpu", "--quiet")
    assert result.exit_code == 2 and "NaN" in result.output
    assert "001.crow/img0.jpg" in result.output
    assert not out.exists()


# -- 4. the recorded hash is that of the weights loaded --------------------------------------

def test_case04_a_model_replaced_while_loading_records_the_loaded_bytes(
        model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import raml_cli.model.files as files

    target = tmp_path / "m.safetensors"
    target.write_bytes(model.read_bytes())
    first = hashlib.sha256(target.read_bytes()).hexdigest()
    torch.manual_seed(1)
    other = _save(tmp_path / "other.safetensors",
                  build_network(NetworkConfig("test_resnet", whitening=16)))
    assert file_sha256(other) != first
    expected, _ = load_model(model)
    real_build = files.build_network

    def swap_then_build(*args, **kwargs):  # another program replaces the file meanwhile
        os.replace(other, target)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(files, "build_network", swap_then_build)
    network, info = files.load_model(target)
    assert info.sha256 == first
    for name, tensor in expected.state_dict().items():
        assert torch.equal(network.state_dict()[name], tensor), name


# -- 5, 6, 11. own-data CSV: duplicates, labels beyond int64 ---------------------------------

def _csv(tmp_path: Path, rows: list[str]) -> Path:
    _images(tmp_path / "imgs", per_class=2)
    csv = tmp_path / "data.csv"
    csv.write_text("path,label\n" + "\n".join(rows) + "\n")
    return csv


def test_case05_duplicate_rows_are_an_error_naming_them(tmp_path: Path) -> None:
    rows = ["imgs/001.crow/img0.jpg,1", "imgs/001.crow/img1.jpg,1", "imgs/002.gull/img0.jpg,2",
            "imgs/002.gull/img1.jpg,2", "imgs/001.crow/img0.jpg,1"]
    with pytest.raises(DataError, match=r"lines 2 and 6"):
        load_custom(_csv(tmp_path, rows))


def test_case05_one_path_under_two_labels_is_an_error(tmp_path: Path) -> None:
    rows = ["imgs/001.crow/img0.jpg,1", "imgs/001.crow/img1.jpg,1", "imgs/002.gull/img0.jpg,2",
            "imgs/002.gull/img1.jpg,2", "imgs/002.gull/img1.jpg,1"]
    with pytest.raises(DataError, match="more than once"):
        load_custom(_csv(tmp_path, rows))


def test_case11_a_label_beyond_int64_is_refused(tmp_path: Path) -> None:
    rows = ["imgs/001.crow/img0.jpg,1", "imgs/001.crow/img1.jpg,1",
            "imgs/002.gull/img0.jpg,1000000000000000000000000000000",
            "imgs/002.gull/img1.jpg,1000000000000000000000000000000"]
    with pytest.raises(DataError, match="line 4.*beyond the largest class id"):
        load_custom(_csv(tmp_path, rows))


def _h5(path: Path, rows: int = 3, label_values=None, **datasets) -> Path:
    vectors = np.eye(rows, 4, dtype=np.float32)
    with h5py.File(path, "w") as handle:
        handle.attrs.update({"format": "raml-embeddings", "format_version": 1})
        for name, value in (("embeddings", vectors),
                            ("labels", np.arange(rows) if label_values is None else label_values),
                            ("paths", np.array([f"{i}.jpg" for i in range(rows)],
                                               dtype=h5py.string_dtype()))):
            if name in datasets:
                datasets[name](handle)
            else:
                handle[name] = value
    return path


def test_case06_uint64_labels_beyond_int64_are_refused(tmp_path: Path) -> None:
    labels = np.array([1, 2, 2**63 + 5], dtype=np.uint64)
    with pytest.raises(FormatError, match="int64"):
        read_embeddings(_h5(tmp_path / "u.h5", label_values=labels))
    ok = read_embeddings(_h5(tmp_path / "ok.h5", label_values=np.array([1, 2, 3], dtype=np.uint64)))
    assert ok.labels.tolist() == [1, 2, 3]


def test_case11_a_seed_beyond_64_bits_is_a_message(toy: Path, tmp_path: Path) -> None:
    huge = "99999999999999999999"
    train = _invoke("train-teacher", "--dataset", str(toy), "-o", str(tmp_path / "t.st"),
                    *TINY_TEACHER, "--seed", huge)
    demo = _invoke("demo", "--out", str(tmp_path / "demo"), "--seed", huge, "--device", "cpu")
    download = _invoke("download", "toy", "--root", str(tmp_path / "data"), "--seed", huge)
    for result in (train, demo, download):
        assert result.exit_code == 2 and "--seed" in result.output and "2^63" in result.output
    assert not (tmp_path / "data" / "toy").exists()


# -- 7, 8. FIFOs and link loops under --images -----------------------------------------------

def test_case07_a_fifo_named_like_an_image_is_not_read(tmp_path: Path) -> None:
    images = _images(tmp_path / "images")
    fifo = images / "001.crow" / "pipe.jpg"
    os.mkfifo(fifo)
    samples = _in_thread(lambda: images_in_folder(images))
    assert "001.crow/pipe.jpg" not in [s.path for s in samples] and len(samples) == 4
    with pytest.raises(DataError, match="not a regular file"):
        _in_thread(lambda: load_rgb(fifo))


def test_case08_link_loops_are_entered_once(tmp_path: Path) -> None:
    images = _images(tmp_path / "images")
    (images / "001.crow" / "up").symlink_to("..")
    (images / "002.gull" / "up").symlink_to("..")
    (images / "again").symlink_to("001.crow")  # a second name for a folder already read
    samples = _in_thread(lambda: images_in_folder(images))
    assert sorted(s.path for s in samples) == [
        "001.crow/img0.jpg", "001.crow/img1.jpg", "002.gull/img0.jpg", "002.gull/img1.jpg"]


# -- 9. names that are not UTF-8 -------------------------------------------------------------

def test_case09_non_utf8_names_are_left_out_with_a_warning(model: Path, tmp_path: Path) -> None:
    images = _images(tmp_path / "images")
    odd = os.fsdecode(b"caf\xe9.jpg")
    (images / "001.crow" / "img0.jpg").rename(images / "001.crow" / odd)
    out = tmp_path / "out.h5"
    result = _invoke("embed", str(model), "--images", str(images), "-o", str(out),
                     "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert "caf\\xe9.jpg" in result.stderr and "UTF-8" in result.stderr
    assert json.loads(result.stdout)["num_rows"] == 3 and len(read_embeddings(out).embeddings) == 3
    assert not Path(str(out) + ".partial").exists()


def test_case09_non_utf8_names_in_a_dataset_folder_are_a_message(tmp_path: Path) -> None:
    images = _images(tmp_path / "images")
    (images / "002.gull" / "img1.jpg").rename(images / "002.gull" / os.fsdecode(b"\xff.jpg"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_custom(images)


# -- 10. a file where a folder belongs -------------------------------------------------------

def test_case10_a_file_as_root_or_out_is_a_message(tmp_path: Path) -> None:
    blocker = tmp_path / "FILE"
    blocker.write_text("mine")
    download = _invoke("download", "toy", "--root", str(blocker))
    demo = _invoke("demo", "--out", str(blocker), "--device", "cpu")
    for result in (download, demo):
        assert result.exit_code == 2 and "is a file, not a folder" in result.output
    assert blocker.read_text() == "mine"


# -- 12. forged HDF5 files -------------------------------------------------------------------

def test_case12_a_header_declaring_billions_of_rows_is_refused(tmp_path: Path) -> None:
    rows = 2_000_000_000
    path = tmp_path / "forged.h5"
    with h5py.File(path, "w") as handle:  # shapes only: no data was ever written
        handle.attrs.update({"format": "raml-embeddings", "format_version": 1})
        handle.create_dataset("embeddings", shape=(rows, 4), dtype=np.float32, chunks=(1024, 4))
        handle.create_dataset("labels", shape=(rows,), dtype=np.int64, chunks=(4096,))
        handle.create_dataset("paths", shape=(rows,), dtype=h5py.string_dtype(),
                              chunks=(4096,))
    assert path.stat().st_size < 100_000
    with pytest.raises(FormatError, match="truncated or damaged"):
        read_embeddings(path)


def test_case12_a_dangling_soft_link_is_a_format_error(tmp_path: Path) -> None:
    def dangling(handle: h5py.File) -> None:
        handle["labels"] = h5py.SoftLink("/nowhere")

    path = _h5(tmp_path / "dangling.h5", labels=dangling)
    with pytest.raises(FormatError, match="link to nothing|lacks"):
        read_embeddings(path)


# -- 13. sizes beyond reason -----------------------------------------------------------------

def test_case13_size_options_and_metadata_have_an_upper_bound(model: Path,
                                                              tmp_path: Path) -> None:
    images = _images(tmp_path / "images")
    out = tmp_path / "out.h5"
    chunk = _invoke("embed", str(model), "--images", str(images), "-o", str(out),
                    "--chunk-rows", "100000000000", "--device", "cpu")
    assert chunk.exit_code == 2 and "--chunk-rows" in chunk.output
    with pytest.raises(InputError, match="--chunk-rows"):
        embed_dataset(model, out, [Sample("001.crow/img0.jpg", 1)], images, dataset="x",
                      split="images", chunk_rows=100_000_000_000, device="cpu")
    info = _invoke("info", str(model), "--res", "100000", "--no-latency", "--device", "cpu")
    assert info.exit_code == 2 and "--res" in info.output and "4096" in info.output
    big = _rewrite_metadata(model, tmp_path / "big.safetensors", resolution="100000")
    embed = _invoke("embed", str(big), "--images", str(images), "-o", str(out), "--device",
                    "cpu")
    assert embed.exit_code == 2 and "resolution 100000" in embed.output
    assert not out.exists()


# -- 14, 15. archives ------------------------------------------------------------------------

class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_case14_an_archive_that_expands_far_beyond_its_size_is_stopped_early(
        tmp_path: Path) -> None:
    archive = tmp_path / "bomb.tar.gz"
    size = 80 << 20
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        member = tarfile.TarInfo("images/zeros.jpg")
        member.size = size
        tar.addfile(member, io.BufferedReader(_Zeros(size)))
    assert archive.stat().st_size < 1 << 20
    dest = tmp_path / "out"
    with pytest.raises(DataError, match="expand"):
        safe_extract(archive, dest)
    assert not (dest / "images" / "zeros.jpg").exists()


def test_case15_a_refused_hard_link_names_the_member_and_its_target(tmp_path: Path) -> None:
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tar:
        member = tarfile.TarInfo("images/x.jpg")
        member.type = tarfile.LNKTYPE
        member.linkname = "../../etc/passwd"
        tar.addfile(member)
    with pytest.raises(UnsafeArchiveError) as caught:
        safe_extract(archive, tmp_path / "out")
    message = str(caught.value)
    assert "'images/x.jpg'" in message and "'../../etc/passwd'" in message
    assert "hard link" in message


# -- 16. the demo's table depends on the seed, not on the machine's cores --------------------

def test_case16_demo_threads_do_not_follow_the_cores(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import raml_cli.demo as demo

    seen: list[int] = []

    class Stop(Exception):
        pass

    def record(self):
        seen.append(torch.get_num_threads())
        raise Stop

    monkeypatch.setattr(demo._Run, "prepare_data", record)
    for cores in (2, 64):  # a container often reports the host's cores
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        with pytest.raises(Stop):
            demo.run_demo(demo.DemoConfig(out=tmp_path / f"demo{cores}", device="cpu"))
    assert seen == [demo.DEMO_CPU_THREADS] * 2
