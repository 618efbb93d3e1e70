"""Routes. Handlers translate HTTP to use-case calls and back; the rules live in application/."""

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, Parameter, PathParameter
from litestar.response import Response

from application.errors import HistoryUnavailable
from domain.idempotency import IDEMPOTENCY_KEY_ALPHABET, IDEMPOTENCY_KEY_MAX_LENGTH, Reply
from domain.message import Message
from domain.session import SESSION_ID_ALPHABET, SESSION_ID_MAX_LENGTH, WHITESPACE
from entrypoints.container import Services
from entrypoints.http.errors import Problem, problem
from entrypoints.http.limits import MAX_BODY
from entrypoints.http.request_log import note_reply, note_session

# The domain's rules, stated in the OpenAPI document so that a client built from it never
# sends what it calls valid and gets a 400; the domain enforces them and says what is wrong.
_SPACE = f"[{WHITESPACE}]*"
_ID = f"[{SESSION_ID_ALPHABET}]{{1,{SESSION_ID_MAX_LENGTH}}}"
SESSION_ID_RULE = f"1-{SESSION_ID_MAX_LENGTH} characters of A-Z a-z 0-9 . _ : - after stripping"
SESSION_ID_PATTERN = f"^{_SPACE}{_ID}{_SPACE}$"
SESSION_ID_OR_BLANK_PATTERN = f"^{_SPACE}({_ID}{_SPACE})?$"
NOT_BLANK_PATTERN = f"[^{WHITESPACE}]"
SessionIdInPath = Annotated[
    str, PathParameter(description=SESSION_ID_RULE, schema_extra={"pattern": SESSION_ID_PATTERN})
]


class ChatRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A field the service does not know (say `model` or `stream`) is a 400 naming it, not
    silently ignored: the client meant something by it."""

    message: Annotated[
        str,
        Parameter(
            min_length=1,
            description="Not blank; at most [history] max_message_chars characters",
            schema_extra={"pattern": NOT_BLANK_PATTERN},
        ),
    ]
    session_id: Annotated[
        str | None,
        Parameter(
            description=f"{SESSION_ID_RULE}; missing, null or blank starts a new session",
            schema_extra={"pattern": SESSION_ID_OR_BLANK_PATTERN},
        ),
    ] = None


class HistoryView(msgspec.Struct):
    session_id: str
    messages: list[Message]


class Status(msgspec.Struct):
    status: str


class ModelState(msgspec.Struct, omit_defaults=True):
    """A configured model's state. cooling_down: it kept failing, so for retry_in_seconds
    it is asked only after every other model failed; at 0 the next request probes it."""

    name: str
    state: Literal["up", "cooling_down"]
    retry_in_seconds: float | None = None


class Readiness(msgspec.Struct):
    status: str
    store: str  # where the service looked: host and port or socket, never a password
    models: list[ModelState]  # in the order they are asked; a cooling one is not unready


def error_spec(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=Problem, description=description, generate_examples=False)


COMMON_ERRORS = {
    400: error_spec("Invalid session id or message"),
    401: error_spec("Missing or wrong bearer token (only when tokens are configured)"),
    429: error_spec("Rate limit exceeded; see Retry-After"),
    503: error_spec("History store unavailable; nothing was changed"),
}
SEND_ERRORS = {
    **COMMON_ERRORS,
    409: error_spec(
        "The Idempotency-Key was used for a different request, or its first request is "
        "still in progress"
    ),
    413: error_spec(f"Request body over {MAX_BODY}"),
    502: error_spec(
        "The model's provider failed or answered something unusable; nothing was stored"
    ),
    504: error_spec("The model's provider timed out; nothing was stored"),
}


# The rule is stated in the document and enforced by the domain, whose error says it in
# words rather than as a regex.
IdempotencyKeyHeader = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=False,
        schema_extra={
            "minLength": 1,
            "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH,
            "pattern": f"^[{IDEMPOTENCY_KEY_ALPHABET}]*$",
        },
        description=(
            "Makes a retry safe: a request repeated with the same key (and token) within "
            "24 h gets the first reply with 200, without asking the model or storing again; "
            "while the first is in flight the repeat waits for it (a stream follows it). "
            "The same key with a different body is a 409."
        ),
    ),
]


def _services(state: State) -> Services:
    services: Services = state.services
    return services


@dataclass(frozen=True, slots=True)
class Caller:
    """Whose sessions a request may touch (set by AuthAndRateLimit) and the services it uses. One
    dependency rather than two: Litestar resolves two in a task group, on every request."""

    namespace: str
    services: Services


def caller_of(request: Request[Any, Any, Any]) -> Caller:
    return Caller(request.state.namespace, request.app.state.services)


class ChatController(Controller):
    path = "/chat"
    tags = ["chat"]  # noqa: RUF012  (Litestar reads it as a class attribute)
    dependencies = {"caller": Provide(caller_of, sync_to_thread=False)}  # noqa: RUF012

    @post("/", status_code=200, responses=SEND_ERRORS, summary="Send a message, get the reply")
    async def send(
        self,
        data: JSONBody[ChatRequest],
        caller: NamedDependency[Caller],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Reply:
        """A missing, null or blank session_id starts a new session; the reply names it."""
        note_session(data.session_id)
        reply = await caller.services.send_message.execute(
            caller.namespace, data.session_id, data.message, idempotency_key
        )
        note_reply(reply.session_id, reply.model, reply.usage)
        return reply

    @get(
        "/{session_id:str}",
        responses={**COMMON_ERRORS, 404: error_spec("No such session")},
        summary="A session's history, oldest first",
    )
    async def show(
        self,
        session_id: SessionIdInPath,
        caller: NamedDependency[Caller],
    ) -> HistoryView:
        note_session(session_id)
        messages = await caller.services.show_history.execute(caller.namespace, session_id)
        return HistoryView(session_id.strip(), messages)

    @delete(
        "/{session_id:str}", status_code=204, responses=COMMON_ERRORS, summary="Forget a session"
    )
    async def forget(
        self,
        session_id: SessionIdInPath,
        caller: NamedDependency[Caller],
    ) -> None:
        note_session(session_id)
        await caller.services.delete_history.execute(caller.namespace, session_id)


@get("/health", summary="Liveness", tags=["operations"])
async def health() -> Status:
    return Status("ok")


@get(
    "/ready",
    summary="Readiness: the history store answers; each model's state",
    tags=["operations"],
    responses={
        200: ResponseSpec(data_container=Readiness, description="The history store answers"),
        503: error_spec("A component is not ready; detail names it"),
    },
    dependencies={"services": Provide(_services, sync_to_thread=False)},
)
async def ready(services: NamedDependency[Services]) -> Response[Readiness] | Response[Problem]:
    try:
        await services.history.ping()
    except HistoryUnavailable:
        return problem(503, f"history store not ready: {services.store_location} did not answer")
    models = [
        ModelState(name, "up")
        if not (status.cooling_seconds or status.probing)
        else ModelState(name, "cooling_down", round(status.cooling_seconds, 1))
        for name, status in await services.models.statuses()
    ]
    return Response(Readiness("ok", services.store_location, models))
