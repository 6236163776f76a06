"""The gateway's gRPC client to Triton: KServe v2 protobuf on one ``grpc.aio`` channel.

The same calls as ``tritonclient.grpc.aio.InferenceServerClient`` (its method names, arguments
and ``InferenceServerException`` errors, so ``Upstream`` and the tests' fakes speak one
interface), built on the generated stub directly: an inference request is one protobuf built
in place, tensors go in as bytes the gateway already holds (a binary v2 body's own slices, the
canonical bytes of a JSON tensor), and no ``numpy`` or wrapper object is made per input or per
request beyond what the caller passes. What ``tritonclient`` adds per call (its input objects,
metadata merging, compression options, a verbose flag) is work this client skips on the hot
path; management calls (metadata, config, readiness, load) are rare and answer JSON-like dicts
as ``as_json=True`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from tritonclient.grpc import InferRequestedOutput, InferResult, service_pb2
from tritonclient.grpc.service_pb2_grpc import GRPCInferenceServiceStub
from tritonclient.utils import InferenceServerException

_MAX_MESSAGE = 64 * 2**20
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 30_000),
    # with a dns:/// target naming a headless Service, spread calls over every Triton pod (a
    # ClusterIP Service balances connections, not calls)
    ("grpc.lb_policy_name", "round_robin"),
    # reconnect within a second once Triton is back (gRPC's default backoff grows to minutes;
    # benchmarks/README.md, "Reliability", has the measured recovery)
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass(frozen=True)
class RawInput:
    """An input tensor as Triton receives it: name, datatype, shape and its raw bytes
    (little-endian, C order; BYTES elements 4-byte length-prefixed)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes


Output: TypeAlias = InferRequestedOutput  # (tritonclient ships no types)


class TritonClient(Protocol):
    """What the gateway asks of Triton (``TritonGrpc`` here; a fake in the route tests)."""

    async def infer(
        self,
        model_name: str,
        inputs: Sequence[Any],
        outputs: Sequence[Output] | None = None,
        request_id: str = "",
        client_timeout: float | None = None,
        model_version: str = "",
    ) -> Any: ...

    async def get_model_metadata(
        self, model_name: str, as_json: bool = True, client_timeout: float | None = None
    ) -> Any: ...

    async def get_model_config(
        self, model_name: str, as_json: bool = True, client_timeout: float | None = None
    ) -> Any: ...

    async def is_server_ready(self, client_timeout: float | None = None) -> bool: ...

    async def is_model_ready(
        self, model_name: str, client_timeout: float | None = None
    ) -> bool: ...

    async def load_model(
        self,
        model_name: str,
        headers: Mapping[str, str] | None = None,
        client_timeout: float | None = None,
    ) -> None: ...

    async def unload_model(
        self,
        model_name: str,
        headers: Mapping[str, str] | None = None,
        client_timeout: float | None = None,
    ) -> None: ...

    async def close(self) -> None: ...


def _error(exc: grpc.aio.AioRpcError) -> InferenceServerException:
    """A gRPC failure as ``tritonclient`` reports it (``status`` is ``str(StatusCode)``)."""
    return InferenceServerException(
        msg=exc.details() or "", status=str(exc.code()), debug_details=exc.debug_error_string()
    )


def _metadata(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...] | None:
    return tuple((k.lower(), v) for k, v in headers.items()) if headers else None


def _as_dict(message: Message) -> dict[str, Any]:
    found: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return found


class TritonGrpc:
    """One channel to Triton (opened inside the serving event loop: ``grpc.aio`` binds to it)."""

    def __init__(self, url: str) -> None:
        self._channel = grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS)
        self._stub = GRPCInferenceServiceStub(self._channel)

    async def infer(
        self,
        model_name: str,
        inputs: Sequence[Any],
        outputs: Sequence[Output] | None = None,
        request_id: str = "",
        client_timeout: float | None = None,
        model_version: str = "",  # "" = the one Triton's version policy picks (the newest)
    ) -> InferResult:
        request = service_pb2.ModelInferRequest(
            model_name=model_name, model_version=model_version, id=request_id
        )
        tensors, contents = request.inputs, request.raw_input_contents
        for item in inputs:
            if isinstance(item, RawInput):
                tensors.add(name=item.name, datatype=item.datatype, shape=item.shape)
                contents.append(item.raw)
            else:  # a tritonclient InferInput (health probes, scoring, embeddings)
                tensors.append(item._get_tensor())
                content = item._get_content()
                if content is not None:
                    contents.append(content)
        for output in outputs or ():
            request.outputs.append(output._get_tensor())
        try:
            response = await self._stub.ModelInfer(request, timeout=client_timeout)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return InferResult(response)

    async def _call(self, method: Any, request: Message, timeout: float | None, **kw: Any) -> Any:
        try:
            return await method(request, timeout=timeout, **kw)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None

    async def get_model_metadata(
        self, model_name: str, as_json: bool = True, client_timeout: float | None = None
    ) -> Any:
        request = service_pb2.ModelMetadataRequest(name=model_name)
        found = await self._call(self._stub.ModelMetadata, request, client_timeout)
        return _as_dict(found) if as_json else found

    async def get_model_config(
        self, model_name: str, as_json: bool = True, client_timeout: float | None = None
    ) -> Any:
        request = service_pb2.ModelConfigRequest(name=model_name)
        found = await self._call(self._stub.ModelConfig, request, client_timeout)
        return _as_dict(found) if as_json else found

    async def is_server_ready(self, client_timeout: float | None = None) -> bool:
        request = service_pb2.ServerReadyRequest()
        found = await self._call(self._stub.ServerReady, request, client_timeout)
        return bool(found.ready)

    async def is_model_ready(self, model_name: str, client_timeout: float | None = None) -> bool:
        request = service_pb2.ModelReadyRequest(name=model_name)
        found = await self._call(self._stub.ModelReady, request, client_timeout)
        return bool(found.ready)

    async def load_model(
        self,
        model_name: str,
        headers: Mapping[str, str] | None = None,
        client_timeout: float | None = None,
    ) -> None:
        request = service_pb2.RepositoryModelLoadRequest(model_name=model_name)
        metadata = _metadata(headers)
        await self._call(self._stub.RepositoryModelLoad, request, client_timeout, metadata=metadata)

    async def unload_model(
        self,
        model_name: str,
        headers: Mapping[str, str] | None = None,
        client_timeout: float | None = None,
    ) -> None:
        request = service_pb2.RepositoryModelUnloadRequest(model_name=model_name)
        metadata = _metadata(headers)
        await self._call(
            self._stub.RepositoryModelUnload, request, client_timeout, metadata=metadata
        )

    async def close(self) -> None:
        await self._channel.close()
