"""--images DIR / LIST.txt: which images, in which order, with which labels."""

import pytest

from raml_cli.embed.inputs import class_id, collect_images
from raml_cli.errors import InputError


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_folder_is_recursive_sorted_and_labelled_by_top_folder(tmp_path):
    for rel in ("017.gull/b.jpg", "017.gull/sub/a.PNG", "003.crow/x.jpeg", "loose.jpg",
                "003.crow/notes.txt", ".hidden/y.jpg"):
        _touch(tmp_path / rel)
    root, samples = collect_images(tmp_path)
    assert root == tmp_path
    assert [(s.path, s.label) for s in samples] == [
        ("003.crow/x.jpeg", 3), ("017.gull/b.jpg", 17), ("017.gull/sub/a.PNG", 17),
        ("loose.jpg", -1)]


def test_named_classes_get_stable_ids_shared_across_folders(tmp_path):
    _touch(tmp_path / "q" / "gull" / "1.jpg")
    _touch(tmp_path / "db" / "crow" / "2.jpg")
    _touch(tmp_path / "db" / "gull" / "3.jpg")
    _, queries = collect_images(tmp_path / "q")
    _, database = collect_images(tmp_path / "db")
    assert queries[0].label == database[1].label == class_id("gull") >= 0
    assert database[0].label != database[1].label


def test_list_file_keeps_its_order_and_uses_parent_folders(tmp_path):
    _touch(tmp_path / "imgs" / "5" / "a.jpg")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# queries\nimgs/5/a.jpg\n\nplain.jpg\n{tmp_path}/abs/2/b.jpg\n")
    root, samples = collect_images(listing)
    assert root == tmp_path
    assert [(s.path, s.label) for s in samples] == [
        ("imgs/5/a.jpg", 5), ("plain.jpg", -1), (f"{tmp_path}/abs/2/b.jpg", 2)]


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        collect_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="No images"):
        collect_images(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="names no images"):
        collect_images(tmp_path / "blank.txt")
