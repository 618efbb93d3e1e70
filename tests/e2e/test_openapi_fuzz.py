"""The HTTP API fuzzed from its own OpenAPI document, as the running service publishes it.

schemathesis reads GET /schema/openapi.json from the real service (a subprocess on a real
redis-server, bearer tokens configured, the openai provider pointed at the loopback stub),
then sends schema-valid and schema-violating requests to every operation in it, whatever
operations and parameters the document lists at the time.

Two promises, two tests: every answer is one the document lists (never a 500, a documented
status code and content type, a body of the documented schema, 401 without the token, 405 for
an undocumented method); and the document states the rules the service enforces, so a client
built from it never has a request it calls valid refused.
"""

import collections
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from schemathesis import checks

from tests.e2e.conftest import Service, ServiceLauncher, openai_config
from tests.support.provider_stub import ProviderStub
from tests.support.redis_server import RedisServer

TOKEN = "tok-fuzz-primary-5e1f"
OTHER_TOKEN = "tok-fuzz-other-0c7d"
SEED = 20240501
# Per operation and phase: about 370 cases, about 10 s on two busy cores.
MAX_EXAMPLES = 100

# Every answer is documented: what a client may rely on whatever it sends.
CONTRACT_CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",  # a request the document calls invalid is a 4xx
    "ignored_auth",  # the same request without a token, or with a wrong one, is a 401
    "unsupported_method",  # an undocumented method is a 405
)
# The document states the service's rules: what it calls valid is accepted. Not checked:
# allow_header_conformance, since Litestar 2's own OPTIONS answer on a path with several
# handlers names only one of them (litestar-org/litestar#4169, fixed in 3.x).
DOCUMENTATION_CHECKS = ("positive_data_acceptance",)


@pytest.fixture(scope="module")
def service(
    module_launch: ServiceLauncher, module_stub: ProviderStub, module_redis: RedisServer
) -> Service:
    return module_launch(
        {
            "auth": {"tokens": f"{TOKEN},{OTHER_TOKEN}"},
            "redis": {"url": module_redis.url, "key_prefix": "fuzz"},
            "llm": openai_config(module_stub, timeout_seconds="5"),
        }
    )


@pytest.fixture(scope="module")
def api_schema(service: Service) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "base-url": service.url,
            "auth": {"openapi": {"BearerToken": {"bearer": TOKEN}}},
            "request-timeout": 15,
            "output": {"sanitization": {"enabled": False}},  # test tokens; show the ids
            "generation": {
                "mode": "all",  # schema-valid and schema-violating requests
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",  # no replay of an earlier run's failures: same run in CI
            },
        }
    )
    return schemathesis.openapi.from_url(f"{service.url}/schema/openapi.json", config=config)


class Tally:
    """Cases tried, per operation, and every answer (checks send more), per status."""

    def __init__(self) -> None:
        self.cases: collections.Counter[str] = collections.Counter()
        self.kinds: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.must_reach_everything = False  # set by a test that runs to its end when it passes

    def count_case(self, case: schemathesis.Case) -> None:
        self.cases[f"{case.method} {case.path}"] += 1
        if case.meta is not None:
            self.kinds[f"{case.meta.phase.name} {case.meta.generation.mode}"] += 1

    def count_answer(self, response: requests.Response, *_: Any, **__: Any) -> None:
        self.statuses[response.status_code] += 1


@pytest.fixture
def tally(
    request: pytest.FixtureRequest, service: Service, module_stub: ProviderStub
) -> Iterator[Tally]:
    """Counts while the test runs; afterwards prints the counts, and checks that the run
    reached what it is meant to: the provider, and the 400 and 401 paths."""
    counts = Tally()
    calls = len(module_stub.requests)
    yield counts
    total = sum(counts.cases.values())
    by_operation = ", ".join(f"{op}: {n}" for op, n in sorted(counts.cases.items()))
    by_kind = ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.kinds.items()))
    by_status = ", ".join(f"{status}: {n}" for status, n in sorted(counts.statuses.items()))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(
            f"\n{request.node.name}: {total} generated cases ({by_kind}; {by_operation}); "
            f"{sum(counts.statuses.values())} answers seen, by status ({by_status}); "
            f"{len(module_stub.requests) - calls} provider calls; "
            f"{counts.statuses[500]} answers with status 500"
        )
    assert "unhandled error" not in service.stdout() + service.stderr(), service.output()
    if counts.must_reach_everything:
        assert total >= 100, counts.cases
        assert len(module_stub.requests) > calls, "no generated message reached the provider"
        assert counts.statuses[400] > 0, counts.statuses
        assert counts.statuses[401] > 0, counts.statuses


@pytest.fixture
def http(tally: Tally) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False  # no proxy between the tests and loopback
        session.hooks["response"].append(tally.count_answer)
        yield session


@pytest.fixture
def _schemathesis_node_id(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's from_fixture reads and rewrites `node._nodeid`, an attribute pytest
    9.2 no longer has; it only names subtests in reports, so a copy of the node id will do."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


def _checks(names: tuple[str, ...]) -> list[checks.CheckFunction]:
    return [getattr(checks, name) for name in names]  # loaded by the time a case runs


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.usefixtures("_schemathesis_node_id")
@schema.parametrize()
def test_every_answer_is_documented_and_none_is_a_500(
    case: schemathesis.Case, http: requests.Session, tally: Tally
) -> None:
    tally.must_reach_everything = True
    tally.count_case(case)
    case.call_and_validate(session=http, checks=_checks(CONTRACT_CHECKS))


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.usefixtures("_schemathesis_node_id")
@schema.parametrize()
def test_every_request_the_document_calls_valid_is_accepted(
    case: schemathesis.Case, http: requests.Session, tally: Tally
) -> None:
    tally.count_case(case)
    if _has_invalid_part(case) or _ends_with_another_role(case):
        return
    case.call_and_validate(session=http, checks=_checks(DOCUMENTATION_CHECKS))


def _has_invalid_part(case: schemathesis.Case) -> bool:
    """schemathesis 4.32's coverage phase labels some cases positive whose header it made
    schema-violating on purpose (Last-Event-ID: 0 against its pattern); those say nothing
    about what the document calls valid."""
    components = case.meta.components if case.meta is not None else {}
    return any(info.mode.name == "NEGATIVE" for info in components.values())


def _ends_with_another_role(case: schemathesis.Case) -> bool:
    """OpenAI's APIs take a list of messages whose last is the new turn, the user's: a rule
    the document states in words, since JSON Schema has no keyword for an array's last item."""
    body = case.body if isinstance(case.body, dict) else {}
    messages = body.get("messages", body.get("input"))
    if not isinstance(messages, list) or not messages:
        return False
    last = messages[-1]
    return not isinstance(last, dict) or last.get("role") != "user"
