"""System (POSIX) shared memory for request tensors when Triton runs on the same host.

Each request slot (one per request in flight) owns an input region and an output region,
registered with Triton once and reused: a request's tensors are copied into its slot's input
region and Triton writes the outputs into the output region, so no tensor bytes travel
through gRPC. Outputs are copied out before the slot takes its next request. A region grows
(re-created and re-registered) when a request needs more room (BYTES inputs vary in size).

Region names carry the process id (``tsbatch-<pid>-<token>-<slot>-in-<n>``): a later run
unregisters the ones Triton still holds for a process that is gone and unlinks their
``/dev/shm`` files (a SIGKILLed run can do neither, nor can Python's resource tracker when it
is killed with the run's process group), so killed runs leak nothing for long.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping, Sequence

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from batch.inputs import NUMPY_TYPES, TensorSpec

PREFIX = "tsbatch"
SHM_DIR = "/dev/shm"  # where Linux keeps POSIX shared memory objects
_NAME = re.compile(rf"^{PREFIX}-(\d+)-")
_ALIGN = 64


def _aligned(size: int) -> int:
    return -(-size // _ALIGN) * _ALIGN


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Region:
    """One registered region of ``capacity`` bytes. Growing registers a new generation under
    a new name: Triton may hold the old one a moment after answering (it refuses to unregister
    a region in use), so the old one is retired and unregistered at close."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.generation = 0
        self.name = ""
        self.capacity = 0
        self.handle: shm.SharedMemoryRegion | None = None
        self.retired: list[tuple[str, shm.SharedMemoryRegion]] = []

    async def ensure(self, client: grpcaio.InferenceServerClient, size: int) -> None:
        if size <= self.capacity:
            return
        capacity = _aligned(max(size, 2 * self.capacity, _ALIGN))
        if self.handle is not None:
            self.retired.append((self.name, self.handle))
            await self._release(client)
        self.generation += 1
        name = f"{self.base}-{self.generation}"
        self.handle = shm.create_shared_memory_region(name, f"/{name}", capacity)
        self.name, self.capacity = name, capacity
        await client.register_system_shared_memory(name, f"/{name}", capacity)

    async def _release(self, client: grpcaio.InferenceServerClient) -> None:
        """Unregister and unlink the retired regions Triton lets go of."""
        kept = []
        for name, handle in self.retired:
            try:
                await client.unregister_system_shared_memory(name, client_timeout=10.0)
            except InferenceServerException:
                kept.append((name, handle))  # still in use: try again later
                continue
            shm.destroy_shared_memory_region(handle)
        self.retired = kept

    async def close(self, client: grpcaio.InferenceServerClient) -> None:
        """Unregister and unlink everything; a region Triton still uses (a request of a
        stopped run in flight) stays registered there until a later run's
        ``unregister_stale`` drops it. The local names are unlinked in any case."""
        if self.handle is not None:
            self.retired.append((self.name, self.handle))
            self.handle, self.capacity = None, 0
        await self._release(client)
        for _, handle in self.retired:
            shm.destroy_shared_memory_region(handle)
        self.retired = []


class ShmSlot:
    """The input and output regions of one request slot."""

    def __init__(self, token: str, slot: int, outputs: Sequence[TensorSpec]) -> None:
        base = f"{PREFIX}-{os.getpid()}-{token}-{slot}"
        self.inputs = _Region(f"{base}-in")
        self.outputs = _Region(f"{base}-out")
        # outputs of fixed size go to shared memory; any other makes all come back over gRPC
        self.output_specs = [o for o in outputs]
        self.outputs_in_shm = all(
            not o.variable and o.datatype in NUMPY_TYPES and o.datatype != "BYTES" for o in outputs
        )

    async def prepare(
        self,
        client: grpcaio.InferenceServerClient,
        tensors: Mapping[str, np.ndarray],
        datatypes: Mapping[str, str],
    ) -> tuple[list[grpcclient.InferInput], list[grpcclient.InferRequestedOutput]]:
        """Copy ``tensors`` into the input region; the request's inputs and outputs."""
        blobs: list[tuple[str, list[int], np.ndarray, int]] = []
        size = 0
        for name, array in tensors.items():
            data = serialize_byte_tensor(array) if array.dtype == np.object_ else array
            nbytes = len(data.item()) if array.dtype == np.object_ else array.nbytes
            blobs.append((name, list(array.shape), data, nbytes))
            size += _aligned(nbytes)
        await self.inputs.ensure(client, size)
        assert self.inputs.handle is not None
        inputs, offset = [], 0
        for name, shape, data, nbytes in blobs:
            shm.set_shared_memory_region(self.inputs.handle, [np.ascontiguousarray(data)], offset)
            tensor = grpcclient.InferInput(name, shape, datatypes[name])
            tensor.set_shared_memory(self.inputs.name, nbytes, offset)
            inputs.append(tensor)
            offset += _aligned(nbytes)
        rows = next(iter(tensors.values())).shape[0]
        outputs = []
        if self.outputs_in_shm:
            sizes = [self._output_bytes(o, rows) for o in self.output_specs]
            await self.outputs.ensure(client, sum(_aligned(s) for s in sizes))
            offset = 0
            for spec, nbytes in zip(self.output_specs, sizes, strict=True):
                requested = grpcclient.InferRequestedOutput(spec.name)
                requested.set_shared_memory(self.outputs.name, nbytes, offset)
                outputs.append(requested)
                offset += _aligned(nbytes)
        else:
            outputs = [grpcclient.InferRequestedOutput(o.name) for o in self.output_specs]
        return inputs, outputs

    @staticmethod
    def _output_bytes(spec: TensorSpec, rows: int) -> int:
        return rows * spec.size * np.dtype(NUMPY_TYPES[spec.datatype]).itemsize

    def read(self, result: grpcclient.InferResult) -> dict[str, np.ndarray]:
        """The outputs of ``result`` (copied out of the region)."""
        if not self.outputs_in_shm:
            return {o.name: np.asarray(result.as_numpy(o.name)) for o in self.output_specs}
        assert self.outputs.handle is not None
        found, offset = {}, 0
        for spec in self.output_specs:
            output = result.get_output(spec.name)
            shape = [int(d) for d in output.shape]
            dtype = NUMPY_TYPES[spec.datatype]
            view = shm.get_contents_as_numpy(self.outputs.handle, dtype, shape, offset)
            found[spec.name] = np.array(view, copy=True)
            offset += _aligned(self._output_bytes(spec, shape[0]))
        return found

    async def close(self, client: grpcaio.InferenceServerClient) -> None:
        try:
            await self.inputs.close(client)
        finally:
            await self.outputs.close(client)


async def open_slots(
    client: grpcaio.InferenceServerClient, count: int, outputs: Sequence[TensorSpec]
) -> list[ShmSlot]:
    """``count`` slots; stale registrations of dead batch processes are dropped first."""
    await unregister_stale(client)
    token = secrets.token_hex(3)
    return [ShmSlot(token, i, outputs) for i in range(count)]


def _stale(name: str) -> bool:
    """A region name of another batch process that no longer runs here."""
    match = _NAME.match(name)
    if match is None:
        return False
    pid = int(match.group(1))
    return pid != os.getpid() and not _pid_alive(pid)


def unlink_stale(directory: str = SHM_DIR) -> list[str]:
    """Remove the POSIX shared memory files of batch processes that no longer run here."""
    if not os.path.isdir(directory):
        return []
    removed = []
    for name in os.listdir(directory):
        if _stale(name):
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(name)
            except FileNotFoundError:
                pass  # another run cleaned it first
    return removed


async def unregister_stale(client: grpcaio.InferenceServerClient) -> list[str]:
    """Unregister the regions Triton holds for batch processes that no longer run here, and
    unlink their files."""
    status = await client.get_system_shared_memory_status(as_json=True)
    regions = status.get("regions", {}) if isinstance(status, dict) else {}
    names = regions.keys() if isinstance(regions, dict) else [r.get("name") for r in regions]
    stale = []
    for name in names:
        if _stale(str(name or "")):
            await client.unregister_system_shared_memory(str(name))
            stale.append(str(name))
    unlink_stale()
    return stale
