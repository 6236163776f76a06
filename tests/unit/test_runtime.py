"""The launcher explains what is missing and picks usable ports, without starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.local import RuntimeMissingError, TritonPorts, TritonRuntime, TritonServer
from deploy.local.process import log_tail


def test_missing_runtime_environment_says_how_to_create_it(tmp_path: Path) -> None:
    runtime = TritonRuntime(tmp_path / "nowhere")
    with pytest.raises(RuntimeMissingError, match="make setup"):
        _ = runtime.server_binary


def test_runtime_without_pytriton_names_the_binary(tmp_path: Path) -> None:
    (tmp_path / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.11.7\n")
    runtime = TritonRuntime(tmp_path)
    with pytest.raises(RuntimeMissingError, match="tritonserver binary"):
        _ = runtime.server_binary


def test_missing_backend_stub_is_named(tmp_path: Path) -> None:
    (tmp_path / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.11.7\n")
    backend = tmp_path / "lib/python3.11/site-packages/pytriton/tritonserver/backends/python"
    backend.mkdir(parents=True)
    (backend / "libtriton_python.so").touch()
    (backend / "triton_python_backend_utils.py").touch()
    with pytest.raises(RuntimeMissingError, match=r"stub for Python 3\.11"):
        TritonRuntime(tmp_path).backend_directory(tmp_path / "b")


def test_server_start_with_missing_binary_fails_before_spawning(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    server = TritonServer(TritonRuntime(tmp_path / "nowhere"), repo, work_dir=tmp_path / "w")
    with pytest.raises(RuntimeMissingError):
        server.start()
    assert server.process is None


def test_ports_keep_given_values_and_fill_distinct_free_ones() -> None:
    ports = TritonPorts.resolve(http=18000)
    assert ports.http == 18000
    assert len({ports.http, ports.grpc, ports.metrics}) == 3 and 0 not in ports.as_dict().values()


def test_log_tail_returns_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert log_tail(log, 3).splitlines() == ["line 97", "line 98", "line 99"]
    assert log_tail(tmp_path / "absent") == ""


def test_real_runtime_has_every_piece(runtime: TritonRuntime) -> None:
    """The environment `make setup` built holds the binary, backend, stub and perf_analyzer."""
    assert runtime.server_binary.is_file()
    assert len(runtime.python_backend_files) == 3
    assert runtime.perf_analyzer.is_file()
