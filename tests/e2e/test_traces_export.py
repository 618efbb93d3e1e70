"""[tracing] otlp_endpoint as an operator sets it: the service, as a process, sends its spans
over OTLP/HTTP (protobuf) to a collector's root URL, and sends the last of them as it stops."""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.e2e.conftest import ServiceLauncher, chat

pytestmark = pytest.mark.e2e


class Collector(ThreadingHTTPServer):
    """Records each export request: its path and its decoded spans."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receiver)
        self.exports: list[tuple[str, ExportTraceServiceRequest]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Receiver(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.exports.append((self.path, request))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_spans_reach_the_collector_named_for_the_service(
    launch: ServiceLauncher, collector: Collector, tmp_path: Path
) -> None:
    service = launch(
        {
            "redis": {"url": "", "data_dir": str(tmp_path / "data")},
            "tracing": {"otlp_endpoint": collector.url, "service_name": "chat-under-test"},
        }
    )
    with service.client() as client:
        service.expect(
            client.post("/chat/", json=chat("", "hello"), headers={"X-Request-ID": "otlp-1"}), 200
        )
    assert service.stop() == 0

    assert {path for path, _ in collector.exports} == {"/v1/traces"}
    spans = {}
    for _, export in collector.exports:
        for resource in export.resource_spans:
            names = {a.key: a.value.string_value for a in resource.resource.attributes}
            assert names["service.name"] == "chat-under-test"
            for scope in resource.scope_spans:
                for span in scope.spans:
                    spans[span.name] = {a.key: a.value for a in span.attributes}
    request_span = spans["POST /chat/"]
    assert request_span["http.request.header.x-request-id"].string_value == "otlp-1"
    assert spans["chat primary"]["gen_ai.usage.output_tokens"].int_value > 0
    assert "EVALSHA" in spans
