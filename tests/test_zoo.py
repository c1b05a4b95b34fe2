"""The model zoo: index, lookups, verified downloads (file://, https:// from a local server)."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from torch.utils.data import DataLoader, TensorDataset

from convertsnn import convert, save_snn, zoo
from convertsnn.cli import main
from convertsnn.errors import ConvertSNNError
from convertsnn.importers import LoadedANN, Preprocessing, save_ann
from convertsnn.importers.base import with_normalization
from convertsnn.models import create_model
from convertsnn.snn.network import SpikingNetwork
from tests.conftest import write_npz
from tests.test_cli import assert_clean_error

PREPROCESSING = Preprocessing((0.13,), (0.31,), (1, 28, 28), 10)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """A tiny ANN file and the SNN converted from it, in tmp/model_zoo/."""
    torch.manual_seed(0)
    net = create_model("mnist_cnn", width=4)
    folder = tmp_path / "model_zoo"
    ann = save_ann(net, folder / "ann.safetensors", "mnist_cnn", {"width": 4}, PREPROCESSING)
    calib = DataLoader(TensorDataset(torch.rand(16, 1, 28, 28), torch.zeros(16)), batch_size=16)
    metadata = {"preprocessing": PREPROCESSING.to_dict(), "input_size": [1, 28, 28]}
    snn = convert(with_normalization(net, PREPROCESSING), calib, timesteps=4,
                  calibration="max", device="cpu", metadata=metadata)  # fmt: skip
    return {"ann": ann, "snn": save_snn(snn, folder / "snn.safetensors")}


def entry(name: str, path: Path, kind: str = "snn", **fields) -> dict:
    base = {
        "name": name, "kind": kind, "architecture": "mnist_cnn", "dataset": "mnist",
        "timesteps": 4 if kind == "snn" else None, "neuron": "if", "objective": "none",
        "file": path.name, "sha256": sha256(path), "size": path.stat().st_size,
        "metrics": [{"suite": "clean", "data": "random", "command": "convertsnn evaluate ...",
                     "values": {"clean": 0.5}}],
    }  # fmt: skip
    if "url" in fields:
        del base["file"]
    return base | fields


def write_index(folder: Path, *entries: dict) -> Path:
    path = folder / "index.yaml"
    path.write_text(
        yaml.safe_dump({"format": "convertsnn.zoo", "version": 1, "models": list(entries)})
    )
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("CONVERTSNN_CACHE", str(folder))
    return folder


def cached_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_list_info_and_load_a_file_entry(files, cache):
    index = write_index(files["snn"].parent, entry("tiny_snn", files["snn"]),
                        entry("tiny_ann", files["ann"], kind="ann"))  # fmt: skip
    assert zoo.list_models(index=index) == ["tiny_ann", "tiny_snn"]
    assert zoo.list_models("*snn", index=index) == ["tiny_snn"]
    info = zoo.model_info("tiny_snn", index=index)
    assert info.timesteps == 4 and info.metrics[0].values == {"clean": 0.5}
    snn = zoo.load("tiny_snn", index=index)
    assert isinstance(snn, SpikingNetwork) and snn.timesteps == 4 and not snn.training
    assert snn.metadata["preprocessing"]["mean"] == [0.13]
    assert snn.metadata["zoo"]["name"] == "tiny_snn"
    x = torch.rand(2, 1, 28, 28)
    reference = zoo.load("tiny_snn", index=index)
    assert torch.equal(snn(x), reference(x))
    ann = zoo.load_ann("tiny_ann", index=index)
    assert isinstance(ann, LoadedANN) and ann.preprocessing.input_size == (1, 28, 28)
    assert ann.source["type"] == "zoo" and ann.source["name"] == "tiny_ann"
    with pytest.raises(ConvertSNNError, match=r"is an ANN; load it with convertsnn.zoo.load_ann"):
        zoo.load("tiny_ann", index=index)
    with pytest.raises(ConvertSNNError, match=r"is an SNN"):
        zoo.load_ann("tiny_snn", index=index)
    assert cached_files(cache) == []  # files shipped next to the index are used in place


def test_cli_list_info_pull_and_evaluate_by_zoo_name(files, cache, tmp_path, monkeypatch):
    index = write_index(files["snn"].parent, entry("tiny_snn", files["snn"]))
    monkeypatch.setenv("CONVERTSNN_ZOO_INDEX", str(index))
    runner = CliRunner()
    result = runner.invoke(main, ["zoo", "list", "--out", str(tmp_path / "l.json")])
    assert result.exit_code == 0, result.output
    assert "1 model(s)" in result.output and "tiny_snn" in result.output
    assert "clean 50.00" in result.output
    result = runner.invoke(main, ["zoo", "info", "tiny_snn"])
    assert result.exit_code == 0, result.output
    assert "timesteps: 4" in result.output and "(present)" in result.output
    result = runner.invoke(main, ["zoo", "pull", "tiny_snn"])
    assert result.exit_code == 0 and "sha256 verified" in result.output
    data = write_npz(tmp_path / "d.npz", n=8, shape=(28, 28))
    result = runner.invoke(main, ["evaluate", "zoo:tiny_snn", "--data", str(data), "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "SNN T=4" in result.output
    assert_clean_error(runner.invoke(main, ["zoo", "info", "tiny_snm"]), "did you mean tiny_snn")


def test_tampered_file_fails_the_sha256_check_in_one_line(files, cache):
    index = write_index(files["snn"].parent, entry("tiny_snn", files["snn"]))
    raw = bytearray(files["snn"].read_bytes())
    raw[-1] ^= 0xFF
    files["snn"].write_bytes(bytes(raw))
    with pytest.raises(ConvertSNNError, match="fails the sha256 check"):
        zoo.load("tiny_snn", index=index)
    result = CliRunner().invoke(main, ["zoo", "--index", str(index), "pull", "tiny_snn"])
    assert_clean_error(result, "fails the sha256 check")
    assert "tampered" in result.output
    files["snn"].unlink()
    assert_clean_error(CliRunner().invoke(main, ["zoo", "--index", str(index), "pull", "tiny_snn"]),
                       "is missing")  # fmt: skip


def test_file_url_downloads_to_the_cache_and_cached_copies_are_verified(files, cache, tmp_path):
    url = files["snn"].as_uri()
    index = write_index(tmp_path, entry("remote", files["snn"], url=url))
    path = zoo.pull("remote", index=index)
    assert path.is_relative_to(cache) and path.read_bytes() == files["snn"].read_bytes()
    assert cached_files(cache) == [path]
    files["snn"].unlink()  # the cached copy is used from now on
    assert zoo.load("remote", index=index).timesteps == 4
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ConvertSNNError, match=r"sha256 check.*zoo pull remote --force"):
        zoo.load("remote", index=index)


def test_truncated_or_wrong_download_leaves_nothing(files, cache, tmp_path):
    full = files["snn"]
    short = tmp_path / "short.safetensors"
    short.write_bytes(full.read_bytes()[:1000])
    index = write_index(tmp_path, entry("short", full, url=short.as_uri()))
    with pytest.raises(ConvertSNNError, match=r"download of file://.* fails the sha256 check"):
        zoo.pull("short", index=index)
    assert cached_files(cache) == []


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files; ``/cut/NAME`` announces the full length but stops halfway."""

    def do_GET(self) -> None:
        if not self.path.startswith("/cut/"):
            return super().do_GET()
        body = (Path(self.directory) / self.path.removeprefix("/cut/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def https_server(tmp_path, monkeypatch):
    """An HTTPS server on 127.0.0.1 with a self-signed certificate the client trusts."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)  # fmt: skip
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: _Handler(*a, directory=str(served))
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_https_download_verified_cached_and_cut_short_refused(files, cache, tmp_path, https_server):
    served, base = https_server
    shutil.copy(files["snn"], served / "snn.safetensors")
    shutil.copy(files["ann"], served / "ann.safetensors")
    index = write_index(
        tmp_path,
        entry("web", files["snn"], url=f"{base}/snn.safetensors"),
        entry("cut", files["ann"], url=f"{base}/cut/ann.safetensors"),
        entry("gone", files["snn"], url=f"{base}/missing.safetensors"),
    )
    snn = zoo.load("web", index=index)
    assert snn.timesteps == 4 and len(cached_files(cache)) == 1
    with pytest.raises(ConvertSNNError, match=r"was cut short \(\d+ of \d+ bytes\)"):
        zoo.pull("cut", index=index)
    with pytest.raises(ConvertSNNError, match=r"cannot download .*404"):
        zoo.pull("gone", index=index)
    assert len(cached_files(cache)) == 1  # neither failure left a file, partial or temporary
    (served / "snn.safetensors").write_bytes(b"not the model")
    result = CliRunner().invoke(main, ["zoo", "--index", str(index), "pull", "web", "--force"])
    assert_clean_error(result, "fails the sha256 check")
    assert zoo.load("web", index=index).timesteps == 4  # the good cached copy survived


def test_offline_and_index_errors_are_one_line(files, cache, tmp_path):
    index = write_index(tmp_path, entry("offline", files["snn"], url="https://127.0.0.1:9/x.safetensors"))  # fmt: skip
    with pytest.raises(ConvertSNNError, match=r"cannot download https://127.0.0.1:9/x.safetensors"):
        zoo.pull("offline", index=index)
    bad = [
        ({"sha256": "abc"}, "sha256 must be 64 hex digits"),
        ({"kind": "onnx"}, "kind must be one of snn, ann"),
        ({"url": "http://example.com/x"}, "exactly one of file or url"),
        ({"file": None, "url": "ftp://example.com/x"}, "url must start with https:// or file://"),
        ({"colour": "red"}, "unknown field(s) colour"),
        ({"metrics": [{"suite": "x"}]}, "each metrics block needs"),
    ]
    for fields, message in bad:
        path = write_index(tmp_path, entry("m", files["snn"]) | fields)
        with pytest.raises(ConvertSNNError, match=message.replace("(", r"\(").replace(")", r"\)")):
            zoo.list_models(index=path)
    twice = write_index(tmp_path, entry("m", files["snn"]), entry("m", files["snn"]))
    with pytest.raises(ConvertSNNError, match="appears twice"):
        zoo.load_index(twice)
    result = CliRunner().invoke(main, ["zoo", "--index", str(tmp_path / "none.yaml"), "list"])
    assert_clean_error(result, "zoo index not found")


def test_build_runs_the_recipe_pipeline_and_compares_digests(files, tmp_path):
    """`zoo build NAME` runs the entry's recipe from the folder holding recipes/."""
    data = tmp_path / "data"
    data.mkdir()
    write_npz(data / "calib.npz", n=16, shape=(28, 28))
    options = "-T 4 --calibration max --device cpu"
    shipped = files["ann"].parent / "built.safetensors"
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(files["ann"]), "--calib", str(data / "calib.npz"),
                                  *options.split(), "-o", str(shipped)])  # fmt: skip
    assert result.exit_code == 0, result.output
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "built.yaml"
    recipe.write_text(yaml.safe_dump({
        "description": "tiny conversion",
        "pipeline": [f"convertsnn convert model_zoo/ann.safetensors --calib {{data}}/calib.npz "
                     f"{options} -o {{work}}/snn.safetensors"],
        "output": "{work}/snn.safetensors",
    }))  # fmt: skip
    index = write_index(files["ann"].parent, entry("built", shipped, recipe="recipes/built.yaml"))
    rebuilt = tmp_path / "rebuilt.safetensors"
    result = runner.invoke(main, ["zoo", "--index", str(index), "info", "built"])
    assert "rebuild: convertsnn zoo build built" in result.output
    result = runner.invoke(main, ["zoo", "--index", str(index), "build", "built", "-o", str(rebuilt),
                                  "--data-root", str(data), "--work-dir", str(tmp_path / "w")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "[1/1] convertsnn convert" in result.output and rebuilt.is_file()
    assert "identical to the zoo file" in result.output
    recipe.write_text(yaml.safe_dump({"pipeline": ["convertsnn convert missing.pt -o {out}"]}))
    result = runner.invoke(
        main, ["zoo", "build", str(recipe), "-o", str(tmp_path / "x.safetensors")]
    )
    assert_clean_error(result, "step 1 of")
    assert "--from-step 1" in result.output


def test_bad_recipes_are_refused_before_running(tmp_path):
    runner = CliRunner()
    recipe = tmp_path / "r.yaml"
    cases = [
        ({"pipeline": ["python evil.py"]}, "is not a convertsnn command"),
        ({"objective": "trades", "eps": "2/255"}, "is not a pipeline recipe"),
        ({"pipeline": []}, "non-empty list"),
        ({"pipeline": ["convertsnn models"], "outptu": "x"}, "unknown key(s) outptu"),
    ]
    for content, message in cases:
        recipe.write_text(yaml.safe_dump(content))
        assert_clean_error(runner.invoke(main, ["zoo", "build", str(recipe)]), message)
    recipe.write_text(yaml.safe_dump({"pipeline": ["convertsnn models"]}))
    result = runner.invoke(main, ["zoo", "build", str(recipe), "--from-step", "2"])
    assert_clean_error(result, "--from-step must be between 1 and 1")


def test_an_installed_package_reads_the_index_the_wheel_installs(files, tmp_path, monkeypatch):
    """Outside a source checkout the index comes from <prefix>/share/convertsnn/model_zoo."""
    from convertsnn.zoo import registry

    installed = write_index(files["snn"].parent, entry("installed", files["snn"]))
    monkeypatch.delenv(registry.INDEX_ENV, raising=False)
    monkeypatch.setattr(registry, "CHECKOUT_INDEX", tmp_path / "no_checkout" / "index.yaml")
    monkeypatch.setattr(registry, "INSTALLED_INDEX", installed)
    assert registry.index_path() == installed
    assert zoo.list_models() == ["installed"]
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"share/convertsnn/model_zoo" = ["model_zoo/index.yaml", "model_zoo/*.safetensors"]' in (
        pyproject
    )
