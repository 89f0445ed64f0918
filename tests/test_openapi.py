"""Fuzzing the running server from docs/openapi.yaml with schemathesis.

Every operation gets requests generated from the document, valid ones and
invalid ones; no answer may be a server error or contradict the document
(status, content type, headers, body schema).
"""

import asyncio
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from .harness import ServerProcess, send

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
schema = schemathesis.openapi.from_path(DOCUMENT)


@pytest.fixture(scope="module", params=["changes", "etag"])
def server(request):
    # Limits that let the fuzzer reach the handlers, but a low comment cap so
    # 409 is met as well; a short poll timeout for cursors that would wait.
    # The document describes both --api modes, so both are fuzzed.
    options = ("--write-rate=0", "--max-comments=3", "--poll-timeout=0.2", f"--api={request.param}")
    with ServerProcess(*options) as server:
        # The document's example titles exist, so reads of them are checked too.
        for title in ("Unix%20pipes", "100%25%20sure%3F%20a%2Fb%20%C3%BCn%C3%AF%20%F0%9F%98%80"):
            asyncio.run(send(server.port, "PUT", f"/talks/{title}", {"presenter": "Ada", "summary": "s"}))
            asyncio.run(send(server.port, "POST", f"/talks/{title}/comments", {"author": "Bob", "message": "m"}))
        yield server
        assert server.stop() == 0


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_server_answers_as_documented(case, server):
    case.call_and_validate(base_url=server.base)
