"""The text pipeline of an encoder as a Triton ensemble: raw strings in, embeddings out.

``write_text_pipeline`` writes two models beside an exported text encoder ``E``:

* ``E_tokenizer``: a python-backend model (``python_backend/tokenizer.py`` as ``model.py``,
  the encoder's own ``tokenizer.json`` beside it) with dynamic batching: ``text`` (BYTES [1])
  → ``input_ids``/``attention_mask``/``token_type_ids`` (INT64 [-1], padded per request) and
  ``token_count`` (INT64 [1]);
* ``E_text``: platform ``ensemble``: ``text`` → ``E_tokenizer`` → ``E`` (model_version -1,
  the newest) → ``sentence_embedding`` (the encoder's embedding output) and ``token_count``.

Clients (the gateway's ``/v1/embeddings``, any gRPC/HTTP client) send raw strings to Triton;
too-long or malformed texts come back as per-request INVALID_ARG errors from the tokenizer.
Configs are built from ``model_config_pb2`` and checked before anything is written; version
directories are installed atomically (``export.repository.install_version``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from tokenizers import Tokenizer
from tritonclient.grpc import model_config_pb2 as mc

from export.errors import ExportError, ModelConfigError
from export.model_config import ENSEMBLE, validate_config, write_config
from export.naming import text_model_name, tokenizer_name
from export.repository import install_version
from export.status import Status, StepResult

TOKENIZER_RUNNER = Path(__file__).parent / "python_backend" / "tokenizer.py"
TEXT_INPUT = "text"
TOKEN_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")
TOKEN_COUNT = "token_count"
EMBEDDING_OUTPUT = "sentence_embedding"


def embedding_output(encoder: mc.ModelConfig) -> mc.ModelOutput:
    """The encoder output the ensemble returns as ``sentence_embedding``: the one of that
    name, else the encoder's only output."""
    named = [o for o in encoder.output if o.name == EMBEDDING_OUTPUT]
    if named:
        return named[0]
    if len(encoder.output) == 1:
        return encoder.output[0]
    names = [o.name for o in encoder.output]
    raise ModelConfigError(
        f"encoder {encoder.name!r} has outputs {names}: name its embedding output "
        f"{EMBEDDING_OUTPUT!r} so the text pipeline knows which one to return"
    )


def _check_encoder(encoder: mc.ModelConfig) -> None:
    if encoder.max_batch_size < 1:
        raise ModelConfigError(
            f"encoder {encoder.name!r}: max_batch_size is {encoder.max_batch_size}; the text "
            "pipeline batches, so the encoder must too (max_batch_size > 0)"
        )
    for tensor in encoder.input:
        if tensor.name not in TOKEN_OUTPUTS:
            raise ModelConfigError(
                f"encoder {encoder.name!r}: input {tensor.name!r} is not something the "
                f"tokenizer produces ({list(TOKEN_OUTPUTS)})"
            )
        if tensor.data_type != mc.TYPE_INT64 or list(tensor.dims) != [-1]:
            raise ModelConfigError(
                f"encoder {encoder.name!r}: input {tensor.name!r} must be TYPE_INT64 with dims "
                f"[-1] to take the tokenizer's output, got "
                f"{mc.DataType.Name(tensor.data_type)} {list(tensor.dims)}"
            )
    embedding_output(encoder)


def build_tokenizer_config(
    encoder: mc.ModelConfig, *, max_length: int, instance_count: int = 1
) -> mc.ModelConfig:
    """The tokenizer model of ``encoder`` (python backend, dynamic batching, CPU)."""
    _check_encoder(encoder)
    if max_length < 2:
        raise ModelConfigError(f"max_length must be >= 2 ([CLS] + [SEP]), got {max_length}")
    config = mc.ModelConfig(
        name=tokenizer_name(encoder.name),
        backend="python",
        max_batch_size=encoder.max_batch_size,
    )
    config.input.add(name=TEXT_INPUT, data_type=mc.TYPE_STRING, dims=[1])
    for name in TOKEN_OUTPUTS:
        config.output.add(name=name, data_type=mc.TYPE_INT64, dims=[-1])
    config.output.add(name=TOKEN_COUNT, data_type=mc.TYPE_INT64, dims=[1])
    # no delay: tokenizing is far cheaper than waiting; requests that queue up while an
    # execute runs are still merged into the next one
    config.dynamic_batching.max_queue_delay_microseconds = 0
    config.instance_group.add(
        name=f"{config.name}_cpu", count=instance_count, kind=mc.ModelInstanceGroup.KIND_CPU
    )
    config.version_policy.latest.num_versions = 1
    config.parameters["max_sequence_length"].string_value = str(max_length)
    config.parameters["tokenizer_filename"].string_value = "tokenizer.json"
    validate_config(config, f"<{config.name}>")
    return config


def build_ensemble_config(encoder: mc.ModelConfig, tokenizer: mc.ModelConfig) -> mc.ModelConfig:
    """``text`` → tokenizer → encoder (newest version) → ``sentence_embedding``, ``token_count``."""
    _check_encoder(encoder)
    embedding = embedding_output(encoder)
    config = mc.ModelConfig(
        name=text_model_name(encoder.name),
        platform=ENSEMBLE,
        max_batch_size=encoder.max_batch_size,
    )
    config.input.add(name=TEXT_INPUT, data_type=mc.TYPE_STRING, dims=[1])
    config.output.add(
        name=EMBEDDING_OUTPUT, data_type=embedding.data_type, dims=list(embedding.dims)
    )
    config.output.add(name=TOKEN_COUNT, data_type=mc.TYPE_INT64, dims=[1])

    tokenize = config.ensemble_scheduling.step.add(model_name=tokenizer.name, model_version=-1)
    tokenize.input_map[TEXT_INPUT] = TEXT_INPUT
    tokenize.output_map[TOKEN_COUNT] = TOKEN_COUNT
    for tensor in encoder.input:  # only what the encoder reads (e.g. no token_type_ids)
        tokenize.output_map[tensor.name] = tensor.name
    encode = config.ensemble_scheduling.step.add(model_name=encoder.name, model_version=-1)
    for tensor in encoder.input:
        encode.input_map[tensor.name] = tensor.name
    encode.output_map[embedding.name] = EMBEDDING_OUTPUT
    if encoder.response_cache.enable:  # the same policy as the encoder (needs --cache-config)
        config.response_cache.enable = True
    validate_config(config, f"<{config.name}>")
    check_ensemble(config, {encoder.name: encoder, tokenizer.name: tokenizer})
    return config


def check_ensemble(ensemble: mc.ModelConfig, models: Mapping[str, mc.ModelConfig]) -> None:
    """Raise :class:`ModelConfigError` where the ensemble and the configs of its composing
    models disagree (unknown model or tensor, datatype, dims, batch size)."""
    problems: list[str] = []
    tensors: dict[str, tuple[int, list[int]]] = {
        t.name: (t.data_type, list(t.dims)) for t in ensemble.input
    }
    for number, step in enumerate(ensemble.ensemble_scheduling.step):
        model = models.get(step.model_name)
        if model is None:
            problems.append(f"ensemble step {number}: no config for model {step.model_name!r}")
            continue
        if model.max_batch_size < ensemble.max_batch_size:
            problems.append(
                f"model {model.name!r}: max_batch_size {model.max_batch_size} is below the "
                f"ensemble's {ensemble.max_batch_size}"
            )
        for tensor in step.output_map:
            found = next((o for o in model.output if o.name == tensor), None)
            if found is None:
                problems.append(f"model {model.name!r} has no output {tensor!r}")
            else:
                tensors[step.output_map[tensor]] = (found.data_type, list(found.dims))
    for number, step in enumerate(ensemble.ensemble_scheduling.step):
        model = models.get(step.model_name)
        if model is None:
            continue
        for name, source in step.input_map.items():
            wanted = next((i for i in model.input if i.name == name), None)
            if wanted is None:
                problems.append(f"model {model.name!r} has no input {name!r}")
                continue
            if source in tensors and tensors[source] != (wanted.data_type, list(wanted.dims)):
                kind, dims = tensors[source]
                problems.append(
                    f"ensemble tensor {source!r} is {mc.DataType.Name(kind)} {dims} but "
                    f"{model.name!r} input {name!r} wants "
                    f"{mc.DataType.Name(wanted.data_type)} {list(wanted.dims)}"
                )
        missing = {i.name for i in model.input if not i.optional} - set(step.input_map)
        if missing:
            problems.append(
                f"ensemble step {number}: {model.name!r} inputs {sorted(missing)} unfed"
            )
    for output in ensemble.output:
        if output.name in tensors and tensors[output.name] != (
            output.data_type,
            list(output.dims),
        ):
            problems.append(
                f"ensemble output {output.name!r}: datatype/dims differ from its source"
            )
    if problems:
        raise ModelConfigError(f"<{ensemble.name}>: inconsistent ensemble: " + "; ".join(problems))


def write_text_pipeline(
    repository: Path,
    encoder: mc.ModelConfig,
    tokenizer_json: Path,
    *,
    max_length: int,
    version: int = 1,
    instance_count: int = 1,
) -> StepResult:
    """Write ``<encoder>_tokenizer`` and the ensemble ``<encoder>_text`` into ``repository``.

    Idempotent (an existing version of either is replaced atomically). Nothing is written when
    a config is inconsistent or ``tokenizer_json`` cannot be loaded: the result is FAILED with
    the reason.
    """
    started = time.perf_counter()
    step = "text_pipeline"
    try:
        tokenizer = build_tokenizer_config(
            encoder, max_length=max_length, instance_count=instance_count
        )
        ensemble = build_ensemble_config(encoder, tokenizer)
        vocabulary = _check_tokenizer_file(tokenizer_json, encoder)
        tokenizer_dir = install_version(
            repository / tokenizer.name,
            version,
            {"model.py": TOKENIZER_RUNNER, "tokenizer.json": tokenizer_json},
        )
        write_config(tokenizer, repository / tokenizer.name / "config.pbtxt")
        install_version(repository / ensemble.name, version, {})  # ensembles: an empty dir
        write_config(ensemble, repository / ensemble.name / "config.pbtxt")
    except (ExportError, OSError) as exc:
        return StepResult(step, Status.FAILED, str(exc), duration_s=time.perf_counter() - started)
    return StepResult(
        step,
        Status.OK,
        artefact=repository / ensemble.name,
        metrics={
            "ensemble": ensemble.name,
            "tokenizer": tokenizer.name,
            "tokenizer_dir": str(tokenizer_dir),
            "encoder": encoder.name,
            "max_length": max_length,
            "max_batch_size": ensemble.max_batch_size,
            "vocab_size": vocabulary,
        },
        duration_s=time.perf_counter() - started,
    )


def _check_tokenizer_file(path: Path, encoder: mc.ModelConfig) -> int:
    """Load ``path`` as the Triton model will; its vocabulary must fit the encoder's."""
    if not path.is_file():
        raise ExportError(f"tokenizer file {path} not found")
    try:
        vocabulary = Tokenizer.from_file(str(path)).get_vocab_size()
    except Exception as exc:  # tokenizers raises plain Exception on a bad file
        raise ExportError(f"{path} is not a loadable tokenizer.json: {exc}") from None
    declared = (
        encoder.parameters["vocab_size"].string_value
        if "vocab_size" in (encoder.parameters)
        else ""
    )
    if declared and vocabulary > int(declared):
        raise ExportError(
            f"{path}: {vocabulary} tokens but encoder {encoder.name!r} has vocab_size "
            f"{declared}: this is not the encoder's tokenizer"
        )
    return vocabulary
