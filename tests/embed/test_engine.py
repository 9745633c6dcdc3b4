"""embed_dataset / embed_in_memory: content, order, bad images, resume after interruption."""

import h5py
import numpy as np
import pytest
import torch

from raml_cli.data.dataset import Sample
from raml_cli.data.images import load_rgb
from raml_cli.data.transforms import eval_transform
from raml_cli.embed import embed_dataset, embed_in_memory, resume_position
from raml_cli.errors import DataError, InputError
from raml_cli.model.files import file_sha256, load_model
from raml_cli.store import EmbeddingWriter, read_embeddings


def _embed(model_file, out, samples, root, **kw):
    kw.setdefault("batch_size", 3)
    kw.setdefault("device", "cpu")
    return embed_dataset(model_file, out, samples, root, dataset="toy", split="test", **kw)


def test_rows_are_the_network_outputs_in_input_order(model_file, image_dir, tmp_path):
    root, samples = image_dir
    samples = samples[::-1]  # order is the caller's, not sorted
    result = _embed(model_file, tmp_path / "db.h5", samples, root)
    data = read_embeddings(tmp_path / "db.h5")
    assert data.paths == [s.path for s in samples]
    assert data.labels.tolist() == [s.label for s in samples]
    assert data.embeddings.shape == (8, 16) and data.renormalized == 0
    network, info = load_model(model_file)
    transform = eval_transform(48, info.mean, info.std)
    with torch.no_grad():
        direct = network(torch.stack([transform(load_rgb(root / s.path)) for s in samples]))
    np.testing.assert_allclose(data.embeddings, direct.numpy(), atol=1e-5)
    assert data.attrs["model_sha256"] == file_sha256(model_file)
    assert data.attrs["resolution"] == 48 and data.attrs["role"] == "teacher"
    assert data.attrs["split"] == "test" and data.attrs["architecture"] == "resnet10t"
    assert result.num_rows == 8 and result.skipped == [] and result.resolution == 48


def test_resolution_option_and_in_memory_agree(model_file, image_dir, tmp_path):
    root, samples = image_dir
    _embed(model_file, tmp_path / "q.h5", samples, root, res=32)
    data = read_embeddings(tmp_path / "q.h5")
    assert data.attrs["resolution"] == 32
    network, _ = load_model(model_file)
    network.train()
    rows = embed_in_memory(network, samples, root, 32, batch_size=5, workers=1)
    assert network.training  # mode restored
    np.testing.assert_allclose(rows, data.embeddings, atol=1e-5)


def _add_bad(root):
    (root / "002.gull" / "empty.jpg").write_bytes(b"")
    good = (root / "001.crow" / "img0.jpg").read_bytes()
    (root / "001.crow" / "cut.jpg").write_bytes(good[: len(good) // 2])
    (root / "001.crow" / "text.png").write_text("hello")


def test_bad_image_fails_the_run_naming_it_and_keeps_partial(model_file, image_dir, tmp_path):
    root, samples = image_dir
    _add_bad(root)
    samples = samples + [Sample("002.gull/empty.jpg", 2)]
    out = tmp_path / "db.h5"
    with pytest.raises(DataError, match="empty.jpg.*empty"):
        _embed(model_file, out, samples, root, chunk_rows=3)
    assert not out.exists()
    assert (tmp_path / "db.h5.partial").exists()  # the rows before it, for --resume


def test_skip_bad_records_which_and_how_many(model_file, image_dir, tmp_path):
    root, samples = image_dir
    _add_bad(root)
    bad = [Sample("001.crow/cut.jpg", 1), Sample("002.gull/empty.jpg", 2),
           Sample("001.crow/text.png", 1)]
    mixed = samples[:3] + bad[:1] + samples[3:6] + bad[1:] + samples[6:]
    result = _embed(model_file, tmp_path / "db.h5", mixed, root, skip_bad=True)
    assert result.skipped == [b.path for b in bad] and result.num_rows == 8
    data = read_embeddings(tmp_path / "db.h5")
    assert data.paths == [s.path for s in samples]
    with h5py.File(tmp_path / "db.h5") as handle:
        assert handle.attrs["num_skipped"] == 3
        assert [p.decode() for p in handle["skipped"][()]] == [b.path for b in bad]


def _interrupt_after(monkeypatch, calls: int, method: str = "append"):
    original = getattr(EmbeddingWriter, method)
    count = {"n": 0}

    def flaky(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EmbeddingWriter, method, flaky)


def _content(path):
    with h5py.File(path) as handle:
        return ({k: v for k, v in handle.attrs.items()},
                {k: handle[k][()].tolist() for k in ("embeddings", "labels", "paths", "skipped")})


@pytest.mark.slow
def test_resume_after_interruption_gives_the_same_file(model_file, image_dir, tmp_path,
                                                       monkeypatch):
    root, samples = image_dir
    _add_bad(root)
    samples = samples[:5] + [Sample("002.gull/empty.jpg", 2)] + samples[5:]
    kw = dict(batch_size=2, chunk_rows=2, skip_bad=True)
    _embed(model_file, tmp_path / "whole.h5", samples, root, **kw)

    out = tmp_path / "resumed.h5"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            _embed(model_file, out, samples, root, **kw)
    assert not out.exists() and (tmp_path / "resumed.h5.partial").exists()
    result = _embed(model_file, out, samples, root, resume=True, **kw)
    assert result.resumed_from == 4
    assert _content(out) == _content(tmp_path / "whole.h5")


def test_resume_recovers_a_skip_record_lost_in_a_crash(model_file, image_dir, tmp_path,
                                                      monkeypatch):
    root, samples = image_dir
    _add_bad(root)
    samples = samples[:1] + [Sample("002.gull/empty.jpg", 2)] + samples[1:]
    kw = dict(batch_size=2, chunk_rows=2, skip_bad=True)
    _embed(model_file, tmp_path / "whole.h5", samples, root, **kw)
    out = tmp_path / "resumed.h5"
    with monkeypatch.context() as patch:  # rows of the first chunk written, its skip not
        _interrupt_after(patch, 0, "add_skipped")
        with pytest.raises(KeyboardInterrupt):
            _embed(model_file, out, samples, root, **kw)
    _embed(model_file, out, samples, root, resume=True, **kw)
    assert _content(out) == _content(tmp_path / "whole.h5")


def test_resume_refuses_other_inputs_or_settings(model_file, image_dir, tmp_path, monkeypatch):
    root, samples = image_dir
    out = tmp_path / "db.h5"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            _embed(model_file, out, samples, root, batch_size=2, chunk_rows=2)
    with pytest.raises(InputError, match="other images"):
        _embed(model_file, out, samples[::-1], root, batch_size=2, resume=True)
    with pytest.raises(InputError, match="resolution"):
        _embed(model_file, out, samples, root, batch_size=2, resume=True, res=32)
    _embed(model_file, out, samples, root, batch_size=2, resume=True)
    assert read_embeddings(out).paths == [s.path for s in samples]


def test_resume_position_walk():
    samples = [Sample(p, 0) for p in "abcdef"]
    assert resume_position(samples, ["a", "c"], ["b"]) == (3, [])
    assert resume_position(samples, ["a", "c", "d"], []) == (4, ["b"])
    with pytest.raises(InputError):
        resume_position(samples, ["a", "x"], [])


def test_empty_input_and_bad_batch_size(model_file, tmp_path):
    with pytest.raises(InputError, match="no images"):
        _embed(model_file, tmp_path / "x.h5", [], tmp_path)
    with pytest.raises(InputError, match="batch-size"):
        _embed(model_file, tmp_path / "x.h5", [Sample("a.jpg", 0)], tmp_path, batch_size=0)
    assert not (tmp_path / "x.h5").exists()
