"""OpenAI's request and response bodies, the subset the service speaks.

Requests forbid unknown fields: a parameter the service does not implement is a 400 naming it
(code `unsupported_parameter`), never silently ignored. Responses carry every field the
official SDK requires, with the values a plain text reply has.
"""

import re
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec
from litestar.exceptions import ValidationException
from msgspec import Meta

from application.conversations import (
    METADATA_KEY_MAX_CHARS,
    METADATA_MAX_PAIRS,
    METADATA_VALUE_MAX_CHARS,
)
from entrypoints.http.closed_structs import MsgspecDocumented
from entrypoints.http.controllers import NOT_BLANK_PATTERN, SESSION_ID_PATTERN, SESSION_ID_RULE

# Stated in the document and enforced as it is decoded, so both say the same.
Text = Annotated[str, Meta(pattern=NOT_BLANK_PATTERN, description="Not blank")]
SessionId = Annotated[str, Meta(pattern=SESSION_ID_PATTERN, description=SESSION_ID_RULE)]
Metadata = Annotated[
    dict[
        Annotated[str, Meta(max_length=METADATA_KEY_MAX_CHARS)],
        Annotated[str, Meta(max_length=METADATA_VALUE_MAX_CHARS)],
    ],
    Meta(max_length=METADATA_MAX_PAIRS),
]

# --- requests ---------------------------------------------------------------------------------


class TextPart(msgspec.Struct, tag_field="type", tag="text", forbid_unknown_fields=True):
    """Chat Completions' text content part."""

    text: Text


class InputTextPart(msgspec.Struct, tag_field="type", tag="input_text", forbid_unknown_fields=True):
    text: Text


class OutputTextPart(msgspec.Struct, tag_field="type", tag="output_text"):
    """An earlier answer sent back as input (its annotations and logprobs are not read)."""

    text: Text


ContentPart = TextPart | InputTextPart | OutputTextPart
Content = Text | Annotated[list[ContentPart], Meta(min_length=1)]
Role = Literal["system", "developer", "user", "assistant"]


class InputMessage(msgspec.Struct, forbid_unknown_fields=True):
    """A message of a Responses `input` list; an output item sent back has id and status."""

    role: Role
    content: Content
    type: Literal["message"] = "message"
    id: str | None = None
    status: str | None = None


class ConversationRef(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionId


class ResponsesRequest(MsgspecDocumented, msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`input`'s last message is the new turn and must be the user's."""

    exclusive: ClassVar = ("conversation", "previous_response_id")

    input: Text | Annotated[list[InputMessage], Meta(min_length=1)]
    model: str = "default"
    conversation: SessionId | ConversationRef | None = None
    previous_response_id: str | None = None
    instructions: str | None = None
    stream: bool = False
    store: bool = True
    metadata: Metadata | None = None

    def __post_init__(self) -> None:
        if self.conversation is not None and self.previous_response_id is not None:
            raise ValueError("give conversation or previous_response_id, not both")


class ChatMessage(msgspec.Struct, forbid_unknown_fields=True):
    role: Role
    content: Content
    name: str | None = None


class StreamOptions(msgspec.Struct, forbid_unknown_fields=True):
    include_usage: bool = False


class ChatCompletionRequest(
    MsgspecDocumented, msgspec.Struct, forbid_unknown_fields=True, kw_only=True
):
    """`messages`' last message is the new turn and must be the user's."""

    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Meta(ge=1, le=1)] = 1  # more than one choice is unsupported
    user: str | None = None


class ConversationCreate(
    MsgspecDocumented, msgspec.Struct, forbid_unknown_fields=True, kw_only=True
):
    """Initial `items` are not taken: a conversation's turns come through /v1/responses."""

    metadata: Metadata | None = None


T = TypeVar("T")
_AT = re.compile(r"(.*) - at `\$\.?(.*)`")


def strictly(body: bytes, kind: type[T]) -> T:
    """The body as msgspec decodes it unasked. Litestar decodes bodies in msgspec's lax mode,
    which takes 0 for false and "1" for 1: not what the document says (so a handler that
    takes a body this way also declares it to Litestar, for the document)."""
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as error:
        said = _AT.fullmatch(str(error))
        message, key = (said[1], said[2] or "data") if said else (str(error), "data")
        raise ValidationException(
            detail="invalid request body", extra=[{"message": message, "key": key}]
        ) from None


def text_of(content: Content) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content)


# --- responses --------------------------------------------------------------------------------


class InputTokensDetails(msgspec.Struct):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)


class OutputText(msgspec.Struct, kw_only=True, tag_field="type", tag="output_text"):
    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[Any] = msgspec.field(default_factory=list)


class InputText(msgspec.Struct, kw_only=True, tag_field="type", tag="input_text"):
    text: str


class OutputMessage(msgspec.Struct, kw_only=True):
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"


class ConversationItem(msgspec.Struct, kw_only=True):
    """A stored message, as GET /v1/conversations/{id}/items lists it."""

    id: str
    role: Literal["user", "assistant"]
    content: list[InputText | OutputText]
    type: Literal["message"] = "message"
    status: Literal["completed"] = "completed"


class ResponseError(msgspec.Struct):
    code: str
    message: str


class TextFormat(msgspec.Struct):
    type: Literal["text"] = "text"


class TextConfig(msgspec.Struct):
    format: TextFormat = msgspec.field(default_factory=TextFormat)


class Response(msgspec.Struct, kw_only=True):
    """OpenAI's Response object. `status` in_progress while a stream runs."""

    id: str
    created_at: int
    model: str
    status: Literal["in_progress", "completed", "failed"]
    output: list[OutputMessage]
    usage: ResponseUsage | None
    instructions: str | None
    previous_response_id: str | None
    conversation: ConversationRef | None
    metadata: dict[str, str]
    store: bool
    object: Literal["response"] = "response"
    error: ResponseError | None = None
    incomplete_details: None = None
    parallel_tool_calls: bool = False
    tool_choice: Literal["none"] = "none"
    tools: list[Any] = msgspec.field(default_factory=list)
    temperature: None = None
    top_p: None = None
    background: bool = False
    text: TextConfig = msgspec.field(default_factory=TextConfig)
    truncation: Literal["disabled"] = "disabled"


class Conversation(msgspec.Struct, kw_only=True):
    id: str
    created_at: int
    metadata: dict[str, str]
    object: Literal["conversation"] = "conversation"


class ConversationDeleted(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["conversation.deleted"] = "conversation.deleted"
    deleted: bool = True


class ConversationItems(msgspec.Struct, kw_only=True):
    data: list[ConversationItem]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"


class Model(msgspec.Struct, kw_only=True):
    id: str
    created: int
    object: Literal["model"] = "model"
    owned_by: str = "chat-service"


class ModelList(msgspec.Struct, kw_only=True):
    data: list[Model]
    object: Literal["list"] = "list"


class CompletionUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(msgspec.Struct, kw_only=True):
    content: str
    role: Literal["assistant"] = "assistant"
    refusal: None = None


class Choice(msgspec.Struct, kw_only=True):
    message: AssistantMessage
    index: int = 0
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    object: Literal["chat.completion"] = "chat.completion"


class Delta(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(msgspec.Struct, kw_only=True):
    delta: Delta
    index: int = 0
    finish_reason: Literal["stop"] | None = None
    logprobs: None = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
