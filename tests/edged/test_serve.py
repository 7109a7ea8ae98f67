"""A real ``edged serve`` subprocess on the tiny llama model, driven by the official
``openai`` client and by the ``edged`` CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from edged.devtools.daemon import Daemon
from tests.conftest import TINY_CONTEXT

pytestmark = pytest.mark.subprocess
MODEL = "tiny"
CANARY = "CANARY-9d1e-never-log-me"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_file: Path) -> Iterator[Daemon]:
    node = Daemon(tmp_path_factory.mktemp("serve") / "data").start()
    try:
        node.cli("models", "add", str(tiny_model_file), "--name", MODEL, "--owner", "tiny-lab",
                 "--price", "request=10", "--price", "output_per_1k=1000",
                 "--chat-format", "chatml", "--context-length", str(TINY_CONTEXT))
        yield node
    finally:
        node.stop()


@pytest.fixture
def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", max_retries=0)


def test_openai_client_chat_plain_and_streamed(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "hello"}]
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    completion = raw.parse()
    receipt = (completion.model_extra or {})["receipt"]
    assert raw.headers["X-Edged-Receipt"] == receipt["id"]
    assert completion.usage is not None and completion.usage.completion_tokens <= 8
    assert completion.choices[0].finish_reason in ("stop", "length")

    chunks = list(client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, temperature=0,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == completion.choices[0].message.content  # greedy: the same answer
    final = chunks[-1]
    assert final.usage is not None
    assert final.usage.completion_tokens == completion.usage.completion_tokens
    streamed_receipt = (final.model_extra or {})["receipt"]
    assert streamed_receipt["seq"] == receipt["seq"] + 1


def test_openai_client_completions_and_embeddings(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt="abc", max_tokens=5,
                                           temperature=0.7, top_p=0.9, seed=3, stop=["\n"])
    assert completion.usage is not None and completion.usage.completion_tokens <= 5
    again = client.completions.create(model=MODEL, prompt="abc", max_tokens=5,
                                      temperature=0.7, top_p=0.9, seed=3, stop=["\n"])
    assert again.choices[0].text == completion.choices[0].text  # same seed, same text
    stream = client.completions.create(model=MODEL, prompt="abc", max_tokens=5, stream=True)
    pieces = list(stream)
    assert (pieces[-1].model_extra or {})["receipt"]["id"]

    one = client.embeddings.create(model=MODEL, input="hello")  # the client asks for base64
    many = client.embeddings.create(model=MODEL, input=["a", "bb", "ccc"])
    assert len(one.data) == 1 and len(many.data) == 3
    assert len(one.data[0].embedding) == len(many.data[2].embedding) > 0
    assert (many.model_extra or {})["receipt"]["id"]


def test_openai_client_sees_errors_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=[{"role": "user",
                                                                  "content": "x"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=MODEL, prompt="x" * (TINY_CONTEXT * 2))
    assert too_long.value.code == "context_length_exceeded"


def test_cli_models_run_receipts_keys_config(daemon: Daemon) -> None:
    listed = daemon.cli("models", "list").stdout
    assert MODEL in listed
    shown = json.loads(daemon.cli("models", "show", MODEL).stdout)
    assert shown["owner"] == "tiny-lab" and shown["chat_format"] == "chatml"

    run = daemon.cli("run", MODEL, CANARY, "--max-tokens", "6", "--temperature", "0")
    assert "receipt " in run.stderr
    receipt_id = run.stderr.split("receipt ")[1].split()[0]
    receipt = json.loads(daemon.cli("receipts", "show", receipt_id).stdout)
    assert receipt["id"] == receipt_id and receipt["kind"] == "chat"
    assert receipt["fee"] == 10 + receipt["usage"]["out"]  # 1000 per 1k output tokens
    # stderr's one receipt line: id, seq, fee, then each payee's share, owner first.
    node_key = json.loads(daemon.cli("keys", "show").stdout)["public_key"]
    line = next(line for line in run.stderr.splitlines() if line.startswith("receipt "))
    assert line.split(" · ") == [
        f"receipt {receipt_id}", f"seq {receipt['seq']}", f"fee {receipt['fee']}",
        "owner:tiny-lab 90.0%", f"node:{node_key[:11]}… 10.0%"]

    # The model is loaded now: `edged ps` shows where it runs and its slots.
    ps = daemon.cli("ps").stdout.splitlines()
    assert ps[0].split() == ["NAME", "SIZE", "PROCESSOR", "GPU", "SLOTS", "UNTIL"]
    row = next(line.split() for line in ps[1:] if line.startswith(MODEL + " "))
    assert row[3:6] == ["CPU", "-", "0/4"]  # this build has no GPU offload; 4 parallel slots
    loaded = json.loads(daemon.cli("models", "show", MODEL).stdout)
    assert loaded["slots"] == {"busy": 0, "total": 4, "queued": 0}
    assert loaded["processor"] == "CPU"
    assert loaded["gpu_layers"] == 0 and loaded["device_memory_bytes"] == 0
    assert loaded["layers"] > 1  # the blocks and the output layer, from llama.cpp

    # --gpu-layers keeps the model's other options and reloads it on its next use.
    daemon.cli("models", "update", MODEL, "--option", "parallel=2")
    daemon.cli("models", "update", MODEL, "--gpu-layers", "0")
    shown = json.loads(daemon.cli("models", "show", MODEL).stdout)
    assert shown["options"] == {"parallel": 2, "n_gpu_layers": 0}
    refused = daemon.cli("models", "update", MODEL, "--gpu-layers", "most", check=False)
    assert refused.returncode != 0 and "--gpu-layers" in refused.stderr

    assert receipt_id in daemon.cli("receipts", "list", "--limit", "1000").stdout
    verify = daemon.cli("receipts", "verify")
    assert "OK" in verify.stdout

    keys = json.loads(daemon.cli("keys", "show").stdout)
    assert receipt["node"] == keys["public_key"]
    key_files = list((daemon.data_dir / "keys").iterdir())
    assert key_files and all(p.stat().st_mode & 0o777 == 0o600 for p in key_files)
    config = json.loads(daemon.cli("config", "show").stdout)
    assert config["host"] == "127.0.0.1" and config["port"] == daemon.port

    # the canary prompt is nowhere on disk or in the daemon's (debug-level) log
    assert CANARY not in daemon.log_path.read_text(errors="replace")
    for path in daemon.data_dir.rglob("*"):
        if path.is_file() and not path.name.startswith("sha256-"):
            assert CANARY.encode() not in path.read_bytes(), path


def test_cli_models_add_and_rm(daemon: Daemon, tiny_model_file: Path) -> None:
    # A GGUF without a chat template needs a chat format (or none: completions only).
    refused = daemon.cli("models", "add", str(tiny_model_file), "--name", "tiny-copy",
                         check=False)
    assert refused.returncode != 0 and "chat template" in refused.stderr
    daemon.cli("models", "add", str(tiny_model_file), "--name", "tiny-copy",
               "--chat-format", "none")
    assert "tiny-copy" in daemon.cli("models", "list").stdout
    daemon.cli("models", "rm", "tiny-copy")
    assert "tiny-copy" not in daemon.cli("models", "list").stdout
    assert any(daemon.data_dir.glob("models/blobs/sha256-*"))  # still used by "tiny"
    failed = daemon.cli("models", "show", "tiny-copy", check=False)
    assert failed.returncode != 0 and "model_not_found" in failed.stderr


def test_non_loopback_bind_without_keys_is_refused(tmp_path: Path) -> None:
    node = Daemon(tmp_path / "data", extra_args=("--host", "0.0.0.0", "--no-demo-model"))
    with pytest.raises(RuntimeError, match="api_keys"):
        node.start(timeout=30)


def test_cli_datanets_and_model_update(daemon: Daemon, tmp_path: Path) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text("the river flows past the mill and under the stone bridge at dusk\n")
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"id": "r1", "text": "a lantern swings above the harbour "
                                   "gate while the fishermen mend their nets"}) + "\n")
    daemon.cli("datanet", "create", "harbour")
    added = daemon.cli("datanet", "add", "harbour", "--contributor", "st-marys",
                       "--payout", "0x" + "12" * 20, str(notes), str(records))
    assert "added 2 documents" in added.stdout and "1 contributors" in added.stdout
    assert "harbour" in daemon.cli("datanet", "list").stdout
    shown = json.loads(daemon.cli("datanet", "show", "harbour").stdout)
    assert shown["contributors"][0]["id"] == "st-marys" and shown["documents"] == 2

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\x00\x01\x02")
    refused = daemon.cli("datanet", "add", "harbour", "--contributor", "x", str(bad),
                         check=False)
    assert refused.returncode != 0 and "binary" in refused.stderr
    assert json.loads(daemon.cli("datanet", "show", "harbour").stdout)["documents"] == 2

    updated = json.loads(daemon.cli("models", "update", MODEL, "--datanet", "harbour",
                                    "--data-share", "0.25").stdout)
    assert updated["datanets"] == ["harbour"] and updated["data_share_ppm"] == 250_000
    run = daemon.cli("run", MODEL, "hello", "--max-tokens", "4", "--temperature", "0")
    receipt_id = run.stderr.split("receipt ")[1].split()[0]
    receipt = json.loads(daemon.cli("receipts", "show", receipt_id).stdout)
    assert receipt["attr"]["method"] == "spans/1"
    daemon.cli("datanet", "remove-contributor", "harbour", "st-marys")
    daemon.cli("datanet", "compact", "harbour")
    daemon.cli("models", "update", MODEL, "--no-datanets", "--data-share", "0")
    daemon.cli("datanet", "rm", "harbour")
    assert "harbour" not in daemon.cli("datanet", "list").stdout


def test_cli_prove_and_offline_verify(daemon: Daemon, tmp_path: Path) -> None:
    run = daemon.cli("run", MODEL, "prove me", "--max-tokens", "3", "--temperature", "0")
    receipt_id = run.stderr.split("receipt ")[1].split()[0]
    bundle = tmp_path / "bundle.json"
    daemon.cli("receipts", "prove", receipt_id, "-o", str(bundle))
    key = json.loads(daemon.cli("keys", "show").stdout)["public_key"]
    daemon.stop()  # offline: nothing but the bundle and the key
    try:
        assert "OK" in daemon.cli("verify", str(bundle), "--key", key).stdout
        data = json.loads(bundle.read_text())
        data["proof"] = ["00" * 32] + data["proof"][1:] if data["proof"] else ["00" * 32]
        bundle.write_text(json.dumps(data))
        bad = daemon.cli("verify", str(bundle), "--key", key, check=False)
        assert bad.returncode == 1 and "INVALID" in bad.stderr
        other = daemon.cli("verify", str(bundle), "--key", "ab" * 32, check=False)
        assert other.returncode == 1
    finally:
        daemon.start()


def test_tritonclient_against_a_real_daemon(daemon: Daemon, tmp_path: Path) -> None:
    import numpy as np
    import tritonclient.http as triton

    from edged.devtools.tiny_onnx import write_linear_classifier

    classifier = write_linear_classifier(tmp_path / "clf.onnx", seed=5)
    daemon.cli("models", "add", str(classifier.path), "--name", "clf", "--runtime", "onnx",
               "--price", "per_row=3")
    client = triton.InferenceServerClient(url=daemon.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("clf")
        metadata = client.get_model_metadata("clf")
        assert metadata["inputs"][0]["name"] == "input"
        rows = np.random.default_rng(2).normal(size=(2, 4)).astype(np.float32)
        tensor = triton.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=False)
        wanted = triton.InferRequestedOutput("probabilities", binary_data=False)
        result = client.infer("clf", [tensor], outputs=[wanted])
        np.testing.assert_allclose(result.as_numpy("probabilities"),
                                   classifier.probabilities(rows), rtol=1e-5)
        receipt_id = result.get_response()["receipt"]["id"]
        receipt = json.loads(daemon.cli("receipts", "show", receipt_id).stdout)
        assert receipt["kind"] == "predict" and receipt["fee"] == 3 * 2

        # influence/1: name the final linear layer, bind contributor examples
        daemon.cli("models", "update", "clf", "--influence-layer",
                   "input,linear.weight,linear.bias", "--data-share", "0.4")
        examples = np.random.default_rng(3).normal(size=(40, 4)).astype(np.float32)
        labels = classifier.probabilities(examples).argmax(axis=1)
        owners = np.array(["lab-a"] * 20 + ["lab-b"] * 20)
        np.savez(tmp_path / "examples.npz", features=examples, labels=labels,
                 contributors=owners)
        bound = daemon.cli("models", "bind", "clf", str(tmp_path / "examples.npz"))
        assert "bound 40 examples of 2 contributors" in bound.stdout
        result = client.infer("clf", [tensor], outputs=[wanted])
        receipt = json.loads(daemon.cli("receipts", "show",
                                        result.get_response()["receipt"]["id"]).stdout)
        assert receipt["attr"]["method"] == "influence/1"
        assert sum(p[2] for p in receipt["payees"] if p[1] == "data") == 400_000
    finally:
        client.close()
