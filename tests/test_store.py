"""The embeddings file format (raml_cli/store.py): round trip, validation, atomic writes, resume."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from raml_cli import store
from raml_cli.errors import FormatError, InputError
from raml_cli.store import (
    EmbeddingWriter,
    default_attributes,
    read_attributes,
    read_embeddings,
    write_embeddings,
)


def unit_rows(rows: int = 6, dim: int = 4, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def paths(rows: int) -> list[str]:
    return [f"class_{i % 3}/image_{i}.jpg" for i in range(rows)]


def write_raw(path, embeddings=None, labels=None, paths_=None, attrs=None, rows: int = 4):
    """An HDF5 file written by hand (bypassing the writer), to build broken files."""
    embeddings = unit_rows(rows) if embeddings is None else embeddings
    labels = np.arange(rows, dtype=np.int64) if labels is None else labels
    paths_ = paths(rows) if paths_ is None else paths_
    attrs = default_attributes() if attrs is None else attrs
    with h5py.File(path, "w") as handle:
        for name, value in (("embeddings", embeddings), ("labels", labels)):
            if value is not False:
                handle.create_dataset(name, data=value)
        if paths_ is not False:
            handle.create_dataset("paths", data=paths_, dtype=h5py.string_dtype("utf-8"))
        for key, value in attrs.items():
            handle.attrs[key] = value
    return path


def test_round_trip_keeps_rows_labels_paths_and_attributes(tmp_path):
    vectors = unit_rows(6)
    out = write_embeddings(tmp_path / "db.h5", vectors, [0, 0, 1, 1, 2, -1], paths(6),
                           {"role": "teacher", "resolution": 448, "architecture": "resnet50"})
    emb = read_embeddings(out)
    np.testing.assert_array_equal(emb.embeddings, vectors)
    assert emb.labels.dtype == np.int64 and emb.labels.tolist() == [0, 0, 1, 1, 2, -1]
    assert emb.paths == paths(6) and emb.num == 6 and emb.dim == 4
    assert emb.renormalized == 0 and emb.source == out
    assert emb.attrs["format"] == "raml-embeddings" and emb.attrs["format_version"] == 1
    assert emb.attrs["role"] == "teacher" and emb.attrs["resolution"] == 448
    assert set(store.ROOT_ATTRIBUTES) <= set(emb.attrs)
    assert read_attributes(out)["architecture"] == "resnet50"


def test_embeddings_are_uncompressed_float32_chunked_by_rows(tmp_path):
    out = write_embeddings(tmp_path / "db.h5", unit_rows(10), list(range(10)), paths(10),
                           chunk_rows=4)
    with h5py.File(out, "r") as handle:
        ds = handle["embeddings"]
        assert ds.dtype == np.float32 and ds.compression is None and ds.chunks == (4, 4)
        assert handle["labels"].dtype == np.int64
        assert h5py.check_string_dtype(handle["paths"].dtype).encoding == "utf-8"


def test_unicode_paths_survive(tmp_path):
    names = ["vögel/möwe.jpg", "鳥/1.jpg"]
    out = write_embeddings(tmp_path / "u.h5", unit_rows(2), [0, 1], names)
    assert read_embeddings(out).paths == names


def test_missing_file_and_folder_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist.*raml embed"):
        read_embeddings(tmp_path / "nope.h5")
    with pytest.raises(InputError, match="is a folder"):
        read_embeddings(tmp_path)


def test_not_hdf5(tmp_path):
    bogus = tmp_path / "notes.h5"
    bogus.write_text("these are not embeddings")
    with pytest.raises(FormatError, match="not a readable HDF5 file"):
        read_embeddings(bogus)
    with pytest.raises(FormatError, match="not a readable HDF5 file"):
        read_attributes(bogus)


def test_missing_format_attribute(tmp_path):
    attrs = default_attributes()
    del attrs["format"]
    path = write_raw(tmp_path / "x.h5", attrs=attrs)
    with pytest.raises(FormatError, match="no `format` attribute"):
        read_embeddings(path)


def test_other_format_and_other_version(tmp_path):
    path = write_raw(tmp_path / "x.h5", attrs=default_attributes(format="something-else"))
    with pytest.raises(FormatError, match="'something-else'"):
        read_embeddings(path)
    path = write_raw(tmp_path / "y.h5", attrs=default_attributes(format_version=7))
    with pytest.raises(FormatError, match="format_version 7"):
        read_embeddings(path)


@pytest.mark.parametrize("missing", ["embeddings", "labels", "paths"])
def test_missing_dataset(tmp_path, missing):
    kwargs = {{"embeddings": "embeddings", "labels": "labels", "paths": "paths_"}[missing]: False}
    path = write_raw(tmp_path / "x.h5", **kwargs)
    with pytest.raises(FormatError, match=f"lacks the dataset\\(s\\) /{missing}"):
        read_embeddings(path)


def test_dataset_that_is_a_group(tmp_path):
    path = write_raw(tmp_path / "x.h5", embeddings=False)
    with h5py.File(path, "a") as handle:
        handle.create_group("embeddings")
    with pytest.raises(FormatError, match="/embeddings .* not a dataset"):
        read_embeddings(path)


def test_wrong_dtypes(tmp_path):
    path = write_raw(tmp_path / "a.h5", embeddings=np.ones((4, 3), dtype=np.int32))
    with pytest.raises(FormatError, match="/embeddings .* dtype int32; expected float32"):
        read_embeddings(path)
    path = write_raw(tmp_path / "b.h5", labels=np.zeros(4, dtype=np.float32))
    with pytest.raises(FormatError, match="/labels .* integer"):
        read_embeddings(path)
    path = tmp_path / "c.h5"
    write_raw(path, paths_=False)
    with h5py.File(path, "a") as handle:
        handle.create_dataset("paths", data=np.arange(4))
    with pytest.raises(FormatError, match="/paths .* strings"):
        read_embeddings(path)


def test_float64_embeddings_are_read_as_float32(tmp_path):
    vectors = unit_rows(4).astype(np.float64)
    emb = read_embeddings(write_raw(tmp_path / "x.h5", embeddings=vectors))
    assert emb.embeddings.dtype == np.float32
    np.testing.assert_allclose(emb.embeddings, vectors, rtol=1e-6)


def test_wrong_ranks(tmp_path):
    path = write_raw(tmp_path / "a.h5", embeddings=np.ones(4, dtype=np.float32))
    with pytest.raises(FormatError, match="rank 1; expected a \\[N, D\\] matrix"):
        read_embeddings(path)
    path = write_raw(tmp_path / "b.h5", embeddings=np.ones((4, 2, 2), dtype=np.float32))
    with pytest.raises(FormatError, match="rank 3"):
        read_embeddings(path)
    path = write_raw(tmp_path / "c.h5", labels=np.zeros((4, 1), dtype=np.int64))
    with pytest.raises(FormatError, match="/labels .* 1-d integer array"):
        read_embeddings(path)
    path = write_raw(tmp_path / "d.h5", paths_=[["a", "b"]] * 4)
    with pytest.raises(FormatError, match="/paths .* 1-d array of strings"):
        read_embeddings(path)


@pytest.mark.parametrize(("labels", "names"), [(np.arange(3), paths(4)),
                                                (np.arange(4), paths(5))])
def test_row_count_mismatch(tmp_path, labels, names):
    path = write_raw(tmp_path / "x.h5", labels=labels, paths_=names)
    with pytest.raises(FormatError, match="inconsistent: 4 embeddings"):
        read_embeddings(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf(tmp_path, bad):
    vectors = unit_rows(5)
    vectors[3, 1] = bad
    path = write_raw(tmp_path / "x.h5", embeddings=vectors, rows=5)
    with pytest.raises(FormatError, match="NaN or Inf values in 1 row\\(s\\) \\(first: row 3\\)"):
        read_embeddings(path)


def test_huge_finite_rows_are_renormalised_not_called_infinite(tmp_path):
    # Squaring 1e20 overflows float32; the row is finite all the same.
    vectors = unit_rows(4)
    vectors[1] *= np.float32(1e20)
    vectors[3, 0] = np.nan  # and a real NaN next to it is still found
    path = write_raw(tmp_path / "x.h5", embeddings=vectors)
    with pytest.raises(FormatError, match="NaN or Inf values in 1 row\\(s\\) \\(first: row 3\\)"):
        read_embeddings(path)
    vectors[3] = unit_rows(4)[3]
    path = write_raw(tmp_path / "y.h5", embeddings=vectors)
    emb = read_embeddings(path)
    assert emb.renormalized == 1
    np.testing.assert_allclose(emb.embeddings[1], unit_rows(4)[1], rtol=1e-5)


def test_all_zero_row(tmp_path):
    vectors = unit_rows(4)
    vectors[2] = 0.0
    path = write_raw(tmp_path / "x.h5", embeddings=vectors)
    with pytest.raises(FormatError, match="1 all-zero row\\(s\\) \\(first: row 2\\)"):
        read_embeddings(path)


def test_empty_file(tmp_path):
    path = write_raw(tmp_path / "x.h5", embeddings=np.zeros((0, 4), np.float32),
                     labels=np.zeros(0, np.int64), paths_=[], rows=0)
    with pytest.raises(FormatError, match="no embeddings \\(0 rows\\)"):
        read_embeddings(path)


def test_non_unit_rows_are_renormalised_and_counted(tmp_path):
    vectors = unit_rows(5)
    vectors[1] *= 3.0
    vectors[4] *= 0.5
    vectors[2] *= 1.0 + 0.5 * store.UNIT_TOLERANCE  # within tolerance: left alone
    path = write_raw(tmp_path / "x.h5", embeddings=vectors, rows=5)
    emb = read_embeddings(path)
    assert emb.renormalized == 2
    np.testing.assert_allclose(np.linalg.norm(emb.embeddings, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(emb.embeddings[1], vectors[1] / 3.0, rtol=1e-6)


def test_unfinished_partial_file_is_refused(tmp_path):
    out = tmp_path / "db.h5"
    writer = EmbeddingWriter(out, dim=4, attrs={"role": "teacher"})
    writer.append(unit_rows(3), [0, 1, 2], paths(3))
    writer.close()
    assert not out.exists() and writer.partial.exists()
    with pytest.raises(FormatError, match="unfinished embeddings file.*--resume"):
        read_embeddings(writer.partial)


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    out = tmp_path / "db.h5"

    def explode(self, *args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(EmbeddingWriter, "append", explode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_embeddings(out, unit_rows(3), [0, 1, 2], paths(3))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    out = write_embeddings(tmp_path / "db.h5", unit_rows(3), [0, 1, 2], paths(3))
    before = out.read_bytes()
    monkeypatch.setattr(EmbeddingWriter, "finalize",
                        lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_embeddings(out, unit_rows(5), list(range(5)), paths(5))
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["db.h5"]


def test_write_validates_shapes(tmp_path):
    with pytest.raises(InputError, match="\\[N, D\\] matrix"):
        write_embeddings(tmp_path / "x.h5", np.ones(3, np.float32), [0, 1, 2], paths(3))
    with pytest.raises(InputError, match="Row counts differ: 3 embeddings, 2 labels, 3 paths"):
        write_embeddings(tmp_path / "x.h5", unit_rows(3), [0, 1], paths(3))
    with pytest.raises(InputError, match="Row counts differ"):
        write_embeddings(tmp_path / "x.h5", unit_rows(3), 5, paths(3))
    with pytest.raises(InputError, match="No embeddings were produced"):
        write_embeddings(tmp_path / "x.h5", np.zeros((0, 4), np.float32), [], [])
    assert list(tmp_path.iterdir()) == []


def test_writer_resumes_an_interrupted_partial_file(tmp_path):
    out = tmp_path / "db.h5"
    vectors, labels = unit_rows(7), list(range(7))
    attrs = {"role": "teacher", "model_sha256": "abc", "resolution": 448}
    first = EmbeddingWriter(out, dim=4, attrs=attrs, chunk_rows=2)
    first.append(vectors[:3], labels[:3], paths(7)[:3])
    first.add_skipped(["broken.jpg"])
    first.close()  # interrupted

    second = EmbeddingWriter(out, dim=4, attrs=attrs, chunk_rows=2, resume=True)
    assert second.rows_done == 3 and second.skipped == ["broken.jpg"]
    second.append(vectors[3:], labels[3:], paths(7)[3:])
    assert second.finalize() == out
    emb = read_embeddings(out)
    np.testing.assert_array_equal(emb.embeddings, vectors)
    assert emb.labels.tolist() == labels and emb.paths == paths(7)
    assert emb.attrs["num_skipped"] == 1
    assert not second.partial.exists()


def test_resume_truncates_rows_written_past_the_last_complete_append(tmp_path):
    out = tmp_path / "db.h5"
    writer = EmbeddingWriter(out, dim=4)
    writer.append(unit_rows(2), [0, 1], paths(2))
    writer.close()
    with h5py.File(writer.partial, "a") as handle:  # a crash between the two resizes
        handle["embeddings"].resize(3, axis=0)
    again = EmbeddingWriter(out, dim=4, resume=True)
    assert again.rows_done == 2
    again.finalize()
    assert read_embeddings(out).num == 2


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "db.h5"
    writer = EmbeddingWriter(out, dim=4, attrs={"resolution": 448})
    writer.append(unit_rows(2), [0, 1], paths(2))
    writer.close()
    with pytest.raises(InputError, match="other settings \\(resolution differ"):
        EmbeddingWriter(out, dim=4, attrs={"resolution": 224}, resume=True)
    with pytest.raises(InputError, match="embedding size"):
        EmbeddingWriter(out, dim=8, attrs={"resolution": 448}, resume=True)


def test_without_resume_a_partial_file_is_started_over(tmp_path):
    out = tmp_path / "db.h5"
    writer = EmbeddingWriter(out, dim=4)
    writer.append(unit_rows(2), [0, 1], paths(2))
    writer.close()
    fresh = EmbeddingWriter(out, dim=4)
    assert fresh.rows_done == 0
    fresh.append(unit_rows(1), [5], paths(1))
    fresh.finalize()
    assert read_embeddings(out).labels.tolist() == [5]


def test_writer_rejects_rows_of_another_size(tmp_path):
    writer = EmbeddingWriter(tmp_path / "db.h5", dim=4)
    with pytest.raises(InputError, match="Expected 4-d rows, got 3-d"):
        writer.append(unit_rows(2, dim=3), [0, 1], paths(2))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_is_current_names_exactly_this_model_resolution_and_images(tmp_path):
    out = tmp_path / "db.h5"
    attrs = {"model_sha256": "abc", "resolution": 64}
    assert not store.is_current(out, model_sha256="abc", resolution=64, paths=paths(6))
    write_embeddings(out, unit_rows(6), np.arange(6), paths(6), attrs=attrs)
    assert store.is_current(out, model_sha256="abc", resolution=64, paths=paths(6))
    assert not store.is_current(out, model_sha256="abd", resolution=64, paths=paths(6))
    assert not store.is_current(out, model_sha256="abc", resolution=32, paths=paths(6))
    assert not store.is_current(out, model_sha256="abc", resolution=64, paths=paths(5))
    assert not store.is_current(out, model_sha256="abc", resolution=64,
                                paths=list(reversed(paths(6))))
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    assert not store.is_current(tmp_path / "junk.h5", model_sha256="abc", resolution=64,
                                paths=paths(6))


def test_a_resumed_writer_reports_the_rows_it_holds(tmp_path):
    out = tmp_path / "db.h5"
    writer = EmbeddingWriter(out, dim=4, attrs={"model_sha256": "abc"})
    writer.append(unit_rows(3), [0, 1, 2], paths(3))
    writer.close()
    again = EmbeddingWriter(out, dim=4, attrs={"model_sha256": "abc"}, resume=True)
    assert again.rows_done == 3 and again.written_paths() == paths(3)
    again.abort()
