import numpy as np
import pytest

from raml_cli.errors import FormatError, InputError
from raml_cli.index import build_index, read_index_file, read_index_info


def test_the_index_file_round_trips_rows_paths_labels_and_attributes(synthetic_db,
                                                                     tmp_path) -> None:
    db, x = synthetic_db
    out = build_index(db, tmp_path / "db.index", kind="flat").output
    loaded = read_index_file(out)
    assert loaded.index.ntotal == 3000 and loaded.index.d == 32
    assert loaded.paths[5] == "c5/img5.jpg" and loaded.labels[5] == 5
    assert loaded.info.database["model_sha256"] == "0" * 64
    assert loaded.info.database["resolution"] == 448
    np.testing.assert_allclose(loaded.index.reconstruct(7), x[7], atol=1e-6)
    assert read_index_info(out).kind == "flat"
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind


def test_a_missing_file_is_explained(tmp_path) -> None:
    with pytest.raises(InputError, match="raml index"):
        read_index_file(tmp_path / "nope.index")


def test_random_bytes_are_refused(tmp_path) -> None:
    bad = tmp_path / "bad.index"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(FormatError, match="not a raml index file"):
        read_index_file(bad)


def test_a_foreign_safetensors_file_is_refused(models) -> None:
    with pytest.raises(FormatError, match="raml-model"):
        read_index_file(models["teacher"])


def test_a_damaged_faiss_structure_is_refused(synthetic_db, tmp_path) -> None:
    db, _ = synthetic_db
    out = build_index(db, tmp_path / "db.index", kind="flat").output
    data = bytearray(out.read_bytes())
    data[-20000] ^= 0xFF  # inside the faiss blob, the first tensor after the header
    damaged = tmp_path / "damaged.index"
    damaged.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="damaged"):
        read_index_file(damaged)
    truncated = tmp_path / "truncated.index"
    truncated.write_bytes(out.read_bytes()[:5000])
    with pytest.raises(FormatError):
        read_index_file(truncated)
