"""`raml import`: reference checkpoints (built here, in the reference's exact layout) as raml
model files; served from 127.0.0.1, never from the internet."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from typer.testing import CliRunner

from raml_cli.cli.app import app
from raml_cli.errors import DownloadError, FormatError
from raml_cli.model.files import file_sha256, load_model, read_model_info
from raml_cli.model.reference import (
    CATALOGUE,
    import_reference,
    parse_reference_name,
    read_reference_checkpoint,
    reference_network,
)

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
RELEASED = "cub-448r-resnet50-512-gem-w"


class ReferenceGeM(nn.Module):
    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p, self.eps = nn.Parameter(torch.ones(1) * p), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x.clamp(min=self.eps).pow(self.p),
                            (x.size(-2), x.size(-1))).pow(1.0 / self.p)


class ReferenceNet(nn.Module):
    """The reference's network: backbone children without pool/fc, GeM, L2, whiten, L2."""

    def __init__(self, arch: str, whitening: int) -> None:
        super().__init__()
        children = list(getattr(torchvision.models, arch)(weights=None).children())
        dim = children[-1].in_features
        self.backbone = nn.Sequential(*children[:-2])
        self.pool = ReferenceGeM()
        self.whiten = nn.Linear(dim, whitening, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.pool(self.backbone(x)).squeeze(-1).squeeze(-1)
        o = o / (o.norm(dim=1, keepdim=True) + 1e-6)
        o = self.whiten(o)
        return o / (o.norm(dim=1, keepdim=True) + 1e-6)


def reference_checkpoint(path: Path, arch: str = "resnet18", whitening: int = 32,
                         seed: int = 0) -> ReferenceNet:
    """Random weights (BatchNorm statistics and GeM p moved off their defaults) saved as
    ``{"state_dict", "meta"}``, as the reference saves them."""
    torch.manual_seed(seed)
    net = ReferenceNet(arch, whitening)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
        net.pool.p.fill_(2.7)
    meta = {"architecture": arch, "pooling": "gem", "whitening": whitening, "mean": MEAN,
            "std": STD, "outputdim": whitening}
    torch.save({"state_dict": net.state_dict(), "meta": meta}, path)
    return net.eval()


class RangeServer:
    """Serves ``files`` with ``Range``; ``drops[path]``: bytes sent before a dropped reply."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drops: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.lstrip("/")
                outer.requests.append((path, self.headers.get("Range")))
                if path not in outer.files:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = outer.files[path]
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                start = int(match.group(1)) if match else 0
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                drops = outer.drops.get(path)
                if drops:
                    self.wfile.write(body[:drops.pop(0)])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server():
    srv = RangeServer()
    thread = threading.Thread(target=srv.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(scope="module")
def resnet18_pth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ReferenceNet]:
    path = tmp_path_factory.mktemp("reference") / "teacher.pth"
    return path, reference_checkpoint(path)


def test_imported_embeddings_equal_the_reference_forward(resnet18_pth, tmp_path: Path) -> None:
    pth, reference = resnet18_pth
    out = tmp_path / "teacher.safetensors"
    result = import_reference(pth, out, role="teacher", resolution=64, dataset="cub200")
    network, info = load_model(out)
    assert (info.architecture, info.pooling, info.whitening) == ("torchvision/resnet18", "gem",
                                                                 32)
    assert (info.role, info.resolution, info.dataset) == ("teacher", 64, "cub200")
    assert list(info.mean) == MEAN and list(info.std) == STD
    assert info.config["imported_from"]["sha256"] == file_sha256(pth)
    assert result.info.sha256 == info.sha256
    images = torch.randn(3, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = network(images), reference(images)
    assert ours.shape == (3, 32)
    assert (ours - theirs).abs().max().item() <= 1e-5
    assert network.gem_p == pytest.approx(2.7)


def test_resnet50_layout_maps_every_tensor(tmp_path: Path) -> None:
    torch.manual_seed(0)
    children = list(torchvision.models.resnet50(weights=None).children())[:-2]
    state = OrderedDict((f"backbone.{k}", v) for k, v in
                        nn.Sequential(*children).state_dict().items())
    state["pool.p"] = torch.tensor([3.1])
    state["whiten.weight"], state["whiten.bias"] = torch.randn(512, 2048), torch.randn(512)
    meta = {"architecture": "resnet50", "pooling": "gem", "whitening": 512, "mean": MEAN,
            "std": STD, "outputdim": 512}
    torch.save({"state_dict": state, "meta": meta}, tmp_path / "r50.pth")
    network = reference_network(read_reference_checkpoint(tmp_path / "r50.pth"))
    ours = network.state_dict()
    assert torch.equal(ours["backbone.conv1.weight"], state["backbone.0.weight"])
    assert torch.equal(ours["backbone.bn1.running_var"], state["backbone.1.running_var"])
    assert torch.equal(ours["backbone.layer1.0.conv1.weight"], state["backbone.4.0.conv1.weight"])
    assert torch.equal(ours["backbone.layer4.2.bn3.bias"], state["backbone.7.2.bn3.bias"])
    assert torch.equal(ours["whitening.weight"], state["whiten.weight"])
    assert len(ours) == len(state) and network.embedding_dim == 512


def test_catalogue_names_give_role_resolution_and_dataset() -> None:
    assert len(CATALOGUE) == 9
    student = parse_reference_name("sop-S224r-T448r-resnet50-512-gem-w")
    assert (student.role, student.resolution, student.dataset) == ("student", 224, "sop")
    assert student.teacher_name == "sop-448r-resnet50-512-gem-w"
    teacher = CATALOGUE["cars-224r-resnet50-512-gem-w"]
    assert (teacher.role, teacher.resolution, teacher.dataset) == ("teacher", 224, "cars196")
    assert teacher.url == ("http://ptak.felk.cvut.cz/personal/sumapave/public/"
                           "cars-224r-resnet50-512-gem-w.pth")


def test_served_release_downloads_resumes_and_is_cached(resnet18_pth, server,
                                                        tmp_path: Path) -> None:
    pth, reference = resnet18_pth
    payload = pth.read_bytes()
    name = f"{RELEASED}.pth"
    server.files[name] = payload
    server.drops[name] = [len(payload) // 3]
    out, cache = tmp_path / "cub.safetensors", tmp_path / "cache"
    import_reference(RELEASED, out, cache_dir=cache, mirrors=(server.base + "/",),
                     official=False, backoff=0.0)
    assert [r for _, r in server.requests] == [None, f"bytes={len(payload) // 3}-"]
    assert (cache / name).read_bytes() == payload
    info = read_model_info(out)
    assert (info.role, info.resolution, info.dataset) == ("teacher", 448, "cub200")
    assert info.config["imported_from"]["name"] == RELEASED
    network, _ = load_model(out)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (network(images) - reference(images)).abs().max().item() <= 1e-5
    import_reference(RELEASED, tmp_path / "again.safetensors", cache_dir=cache,
                     mirrors=(server.base,), official=False)
    assert len(server.requests) == 2  # the cached copy is used


def test_unreachable_mirror_fails_with_a_message(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match=RELEASED):
        import_reference(RELEASED, tmp_path / "x.safetensors", cache_dir=tmp_path,
                         mirrors=(f"http://127.0.0.1:{port}",), official=False)
    assert not (tmp_path / "x.safetensors").exists()


class Payload:
    """Anything but tensors and plain containers: weights-only loading must refuse it."""

    def __reduce__(self):
        return (print, ("executed",))


def test_files_that_are_not_reference_checkpoints_are_refused(resnet18_pth,
                                                              tmp_path: Path) -> None:
    torch.save({"state_dict": {}, "meta": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(FormatError, match="weights-only"):
        read_reference_checkpoint(tmp_path / "evil.pth")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "plain.pth")
    with pytest.raises(FormatError, match="state_dict` and `meta`"):
        read_reference_checkpoint(tmp_path / "plain.pth")
    pth, _ = resnet18_pth
    blob = torch.load(pth, weights_only=True)
    del blob["state_dict"]["backbone.7.1.bn2.weight"]
    blob["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(blob, tmp_path / "cut.pth")
    with pytest.raises(FormatError, match="missing tensor.*backbone.7.1.bn2.weight.*unexpected"):
        reference_network(read_reference_checkpoint(tmp_path / "cut.pth"))


def test_cli_list_convert_errors_and_distill_on_the_import(resnet18_pth, tmp_path: Path) -> None:
    from raml_cli.data.toy import generate_toy

    runner = CliRunner()
    listed = runner.invoke(app, ["import", "--list", "--json"])
    assert listed.exit_code == 0, listed.output
    names = [m["name"] for m in json.loads(listed.stdout)["models"]]
    assert RELEASED in names and "cub-S224r-T448r-resnet50-512-gem-w" in names
    table = runner.invoke(app, ["import", "--list"])
    assert table.exit_code == 0 and "cars-S224r-T448r" in table.output
    pth, _ = resnet18_pth
    unnamed = runner.invoke(app, ["import", str(pth), "-o", str(tmp_path / "t.safetensors")])
    assert unnamed.exit_code == 2 and "--role, --res, --dataset" in unnamed.output
    unknown = runner.invoke(app, ["import", "cub-999r-nothing"])
    assert unknown.exit_code == 2 and "raml import --list" in unknown.output
    data = tmp_path / "toy"
    generate_toy(data, seed=0, num_classes=8, images_per_class=4, min_side=40, max_side=60)
    teacher = tmp_path / "teacher.safetensors"
    done = runner.invoke(app, ["import", str(pth), "-o", str(teacher), "--role", "teacher",
                               "--res", "32", "--dataset", str(data), "--json", "--quiet"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["model"]["resolution"] == 32
    linked = runner.invoke(app, ["import", str(pth), "-o", str(tmp_path / "s.safetensors"),
                                 "--role", "student", "--res", "16", "--dataset", str(data),
                                 "--teacher", str(teacher), "--quiet"])
    assert linked.exit_code == 0, linked.output
    assert read_model_info(tmp_path / "s.safetensors").teacher_sha256 == file_sha256(teacher)
    student = tmp_path / "student.safetensors"
    distilled = runner.invoke(app, [
        "distill", "--teacher", str(teacher), "--query-res", "16", "-o", str(student),
        "--epochs", "1", "--augs", "2", "--batch-size", "4", "--accumulate", "1",
        "--images-per-epoch", "8", "--workers", "0", "--device", "cpu", "--no-mixup",
        "--json", "--quiet"])
    assert distilled.exit_code == 0, distilled.output
    info = read_model_info(student)
    assert info.role == "student" and info.teacher_sha256 == file_sha256(teacher)
