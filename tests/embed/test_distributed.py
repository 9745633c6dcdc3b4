"""torchrun: two CPU processes (gloo) write one file, in input order."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from raml_cli.store import read_embeddings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_write_one_file_in_input_order(model_file, image_dir, tmp_path):
    root, samples = image_dir
    (root / "002.gull" / "zz_broken.jpg").write_bytes(b"not a jpeg")
    single, double = tmp_path / "single.h5", tmp_path / "double.h5"
    args = ["embed", str(model_file), "--images", str(root), "--device", "cpu",
            "--batch-size", "2", "--chunk-rows", "4", "--skip-bad", "--json"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "raml_cli", *args, "-o", str(single)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
         "-m", "raml_cli", *args, "-o", str(double)],
        capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr
    summary = json.loads(two.stdout)  # one JSON document: only rank 0 reports
    assert summary["world_size"] == 2 and summary["num_skipped"] == 1
    a, b = read_embeddings(single), read_embeddings(double)
    assert b.paths == a.paths and b.labels.tolist() == a.labels.tolist()
    np.testing.assert_allclose(b.embeddings, a.embeddings, atol=1e-5)
    assert b.attrs["model_sha256"] == a.attrs["model_sha256"]
    assert not list(tmp_path.glob("*.partial"))
