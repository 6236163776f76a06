"""The text pipeline (minilm_text: tokenizer -> encoder) answers raw strings in the real Triton."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tokenizers import Tokenizer
from tritonclient.utils import InferenceServerException

from deploy.local import TritonServer
from deploy.local.runtime import TritonRuntime

pytestmark = pytest.mark.integration
MODEL = "minilm_text"
TEXTS = [
    "hi",
    "Triton batches requests dynamically.",
    "A considerably longer sentence, so that one request holds texts of quite different "
    "lengths and the padding of the shorter ones inside the tokenizer model is exercised.",
    "Ünïcödé, emoji 🙂 and CJK 漢字 go through the tokenizer as UTF-8.",
    "short",
]
TOO_LONG = "word " * 300  # 302 tokens with [CLS] and [SEP]; the model takes 256


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    from sentence_transformers import SentenceTransformer

    from export.models.minilm import model_path

    model = SentenceTransformer(str(model_path()), device="cpu")
    texts = [*TEXTS, *_many()]
    return dict(zip(texts, np.asarray(model.encode(texts, normalize_embeddings=True)), strict=True))


@pytest.fixture
def client(triton: TritonServer):
    c = grpcclient.InferenceServerClient(triton.grpc_url)
    yield c
    c.close()


def _many() -> list[str]:
    return [f"request {i}: " + "more words " * (i % 7) for i in range(32)]


def _text_input(values: list[bytes]) -> list[grpcclient.InferInput]:
    array = np.array(values, dtype=np.object_).reshape(-1, 1)
    tensor = grpcclient.InferInput("text", list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return [tensor]


def _encode(texts: list[str]) -> list[bytes]:
    return [t.encode() for t in texts]


def _rel_error(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return np.linalg.norm(got - want, axis=-1) / np.linalg.norm(want, axis=-1)


def test_raw_strings_give_the_pytorch_embeddings(
    client: grpcclient.InferenceServerClient,
    reference: dict[str, np.ndarray],
    tokenizer: Tokenizer,
) -> None:
    result = client.infer(MODEL, _text_input(_encode(TEXTS)))
    vectors = result.as_numpy("sentence_embedding")
    counts = result.as_numpy("token_count")
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    want = np.stack([reference[t] for t in TEXTS])
    assert _rel_error(vectors, want).max() < 1e-4  # the session export is fp32
    assert counts.shape == (len(TEXTS), 1) and counts.dtype == np.int64
    assert counts.ravel().tolist() == [len(e.ids) for e in tokenizer.encode_batch(TEXTS)]


def test_metadata_describes_a_string_input(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata(MODEL, as_json=True)
    assert meta["platform"] == "ensemble"
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("text", "BYTES", ["-1", "1"])
    ]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
        "sentence_embedding": "FP32",
        "token_count": "INT64",
    }


def test_http_json_strings_work_too(triton: TritonServer, reference: dict) -> None:
    client = httpclient.InferenceServerClient(triton.http_url)
    array = np.array(_encode(TEXTS[:2]), dtype=np.object_).reshape(-1, 1)
    tensor = httpclient.InferInput("text", [2, 1], "BYTES")
    tensor.set_data_from_numpy(array, binary_data=False)  # KServe v2 JSON strings
    result = client.infer(MODEL, [tensor])
    client.close()
    want = np.stack([reference[t] for t in TEXTS[:2]])
    assert _rel_error(result.as_numpy("sentence_embedding"), want).max() < 1e-4


def _stats(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(model).model_stats[0]
    return stats.inference_count, stats.execution_count


def _send_all(
    client: grpcclient.InferenceServerClient, requests: list[list[bytes]]
) -> list[grpcclient.InferResult | InferenceServerException]:
    """Every request in flight at once (async_infer); answers in request order."""
    answers: queue.Queue = queue.Queue()
    for i, values in enumerate(requests):
        client.async_infer(
            MODEL,
            _text_input(values),
            callback=lambda result, error, i=i: answers.put((i, result, error)),
            client_timeout=60,
        )
    got: dict[int, grpcclient.InferResult | InferenceServerException] = {}
    for _ in requests:
        i, result, error = answers.get(timeout=60)
        got[i] = error if error is not None else result
    return [got[i] for i in range(len(requests))]


def _settled(client: grpcclient.InferenceServerClient, model: str, wanted: int) -> tuple[int, int]:
    deadline = time.monotonic() + 10  # statistics are updated just after the responses
    while True:
        counts = _stats(client, model)
        if counts[0] >= wanted or time.monotonic() > deadline:
            return counts


def test_concurrent_requests_are_batched_and_answered_correctly(
    client: grpcclient.InferenceServerClient,
    reference: dict[str, np.ndarray],
    tokenizer: Tokenizer,
) -> None:
    texts = _many()
    before = {m: _stats(client, m) for m in ("minilm_tokenizer", "minilm")}
    answers = _send_all(client, [[t.encode()] for t in texts])
    after = {m: _settled(client, m, before[m][0] + len(texts)) for m in before}

    for text, answer in zip(texts, answers, strict=True):
        assert not isinstance(answer, InferenceServerException), answer
        vector = answer.as_numpy("sentence_embedding")[0]
        assert _rel_error(vector, reference[text]) < 1e-4, text  # no row mixed up
        assert int(answer.as_numpy("token_count")[0, 0]) == len(tokenizer.encode(text).ids)
    inferences = {m: after[m][0] - before[m][0] for m in before}
    executions = {m: after[m][1] - before[m][1] for m in before}
    assert inferences == {"minilm_tokenizer": len(texts), "minilm": len(texts)}
    # the dynamic batchers merged requests (fewer executions than requests) in some step
    assert min(executions.values()) < len(texts), executions


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ([b""], "text[0] is empty; send non-empty strings"),
        ([b"fine", TOO_LONG.encode()], "text[1] has 302 tokens; the model takes at most 256"),
        ([b"ok", b"\xff\xfe bad"], "text[1] is not valid UTF-8"),
    ],
)
def test_bad_input_is_an_invalid_argument_that_says_what_to_fix(
    client: grpcclient.InferenceServerClient, values: list[bytes], fragment: str
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, _text_input(values))
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert fragment in (info.value.message() or "")


def test_bad_requests_never_fail_the_others_in_flight(
    client: grpcclient.InferenceServerClient, reference: dict[str, np.ndarray]
) -> None:
    good = _many()[:12]
    bad = {3: [b""], 7: [TOO_LONG.encode()], 11: [b"\xc3\x28"], 15: [b"fine", b""]}
    requests: list[list[bytes]] = [[t.encode()] for t in good]
    for position, values in sorted(bad.items()):
        requests.insert(position, values)
    before = _stats(client, "minilm_tokenizer")[1]
    answers = _send_all(client, requests)
    executions = _stats(client, "minilm_tokenizer")[1] - before

    texts = iter(good)
    for position, answer in enumerate(answers):
        if position in bad:
            assert isinstance(answer, InferenceServerException), position
            assert answer.status() == "StatusCode.INVALID_ARGUMENT"
        else:
            assert not isinstance(answer, InferenceServerException), answer
            vector = answer.as_numpy("sentence_embedding")[0]
            assert _rel_error(vector, reference[next(texts)]) < 1e-4
    # bad and good requests shared tokenizer executions (so the per-request errors mattered)
    assert executions < len(requests), executions


def test_perf_analyzer_measures_the_pipeline_with_raw_strings(
    triton: TritonServer, runtime: TritonRuntime, tmp_path: Path
) -> None:
    """The real perf_analyzer drives the ensemble with raw strings and reports the server-side
    split (`tritonstack bench --model minilm_text`)."""
    from benchmarks.perf_analyzer import run_sweep, write_text_input_data

    data = write_text_input_data(TEXTS, tmp_path / "text.json")
    sweep = run_sweep(
        runtime, MODEL, triton.grpc_url, protocol="grpc", input_data=data, concurrency=[2],
        # max_trials: three stable windows in a row are enough, but one window starved by a
        # loaded machine must not fail the run (it did in CI's order, with 3 trials)
        out_dir=tmp_path, measurement_interval_ms=500, max_trials=10, timeout_s=120,
    )  # fmt: skip
    (point,) = sweep.points
    assert point.model == MODEL and point.concurrency == 2
    assert point.throughput_infer_per_s > 0 and point.server_compute_infer_ms > 0
    assert _inference_count(triton, "minilm_tokenizer") > 0  # the tokenizer really ran


def _inference_count(triton: TritonServer, model: str) -> int:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        stats = client.get_inference_statistics(model, as_json=True)
    finally:
        client.close()
    return int(stats["model_stats"][0]["inference_count"])
