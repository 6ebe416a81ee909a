"""The wire contract: the committed stubs match proto/ragd/v1/ragd.proto, generation is
deterministic, and the services and methods the daemon and clients rely on exist."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
GENERATE = REPO / "proto" / "generate.py"
STUBS = REPO / "clients" / "python" / "ragd_client" / "v1"


def _generate_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ragd_proto_generate", GENERATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_are_up_to_date() -> None:
    pytest.importorskip("grpc_tools")
    proc = subprocess.run(
        [sys.executable, str(GENERATE), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"stubs are stale; run `python proto/generate.py`:\n{proc.stderr}"


def test_generation_is_deterministic_and_check_reports_stale_files(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    gen = _generate_module()
    first, second = tmp_path / "a", tmp_path / "b"
    gen.generate(first)
    gen.generate(second)
    names = sorted(p.name for p in first.iterdir())
    assert names == ["__init__.py", "ragd_pb2.py", "ragd_pb2.pyi", "ragd_pb2_grpc.py"]
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert gen.check(first) == []

    (first / "ragd_pb2.pyi").write_text("# edited by hand\n")
    (first / "ragd_pb2_grpc.py").unlink()
    proc = subprocess.run(
        [sys.executable, str(GENERATE), "--check", "--out", str(first)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 1
    assert "ragd_pb2.pyi" in proc.stderr and "ragd_pb2_grpc.py" in proc.stderr
    assert "ragd_pb2.py\n" not in proc.stderr and "__init__.py" not in proc.stderr


def test_generated_imports_do_not_collide_with_the_daemon_package() -> None:
    for path in STUBS.glob("ragd_pb2*"):
        text = path.read_text()
        assert "from ragd.v1 import" not in text, path
        assert "'ragd.v1.ragd_pb2'" not in text, path
    grpc_stub = (STUBS / "ragd_pb2_grpc.py").read_text()
    assert "from ragd_client.v1 import ragd_pb2" in grpc_stub


def test_services_and_methods_exist() -> None:
    from ragd_client.v1 import ragd_pb2, ragd_pb2_grpc

    services = ragd_pb2.DESCRIPTOR.services_by_name
    expected = {
        "Search": {"Search", "SearchStream", "GetChunk", "ReadFile"},
        "Index": {"Status", "WatchStatus", "AddRoot", "RemoveRoot", "ListRoots", "Reindex"},
    }
    assert set(services) == set(expected)
    for service, methods in expected.items():
        assert set(services[service].methods_by_name) == methods, service
        assert hasattr(ragd_pb2_grpc, f"{service}Stub")
        assert hasattr(ragd_pb2_grpc, f"{service}Servicer")
        assert hasattr(ragd_pb2_grpc, f"add_{service}Servicer_to_server")
        for method in methods:
            assert callable(getattr(getattr(ragd_pb2_grpc, f"{service}Servicer"), method))

    streaming = {
        (s.name, m.name)
        for s in services.values()
        for m in s.methods
        if m.server_streaming or m.client_streaming
    }
    assert streaming == {("Search", "SearchStream"), ("Index", "WatchStatus")}
    assert ragd_pb2.DESCRIPTOR.package == "ragd.v1"
    assert ragd_pb2.SearchRequest.__module__ == "ragd_client.v1.ragd_pb2"


def test_optional_fields_have_presence() -> None:
    from ragd_client.v1 import ragd_pb2

    request = ragd_pb2.SearchRequest(query="q")
    assert not request.HasField("rerank")
    request.rerank = False
    assert request.HasField("rerank")
    hit = ragd_pb2.Hit()
    assert not hit.HasField("rerank_score")
