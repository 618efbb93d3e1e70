"""OpenAI's Conversations over the service's sessions."""

from datetime import datetime
from typing import Annotated, Any, Literal

from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody, QueryParameter

from domain.message import Message
from entrypoints.http.controllers import Caller, SessionIdInPath, caller_of
from entrypoints.http.openai.errors import OPENAI_ERRORS, OPENAI_SHOW_ERRORS
from entrypoints.http.openai.ids import item_id
from entrypoints.http.openai.wire import (
    Conversation,
    ConversationCreate,
    ConversationDeleted,
    ConversationItem,
    ConversationItems,
    InputText,
    OutputText,
    strictly,
)
from entrypoints.http.request_log import note_session

ITEMS_MAX_LIMIT = 100


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def _item(message: Message) -> ConversationItem:
    text: InputText | OutputText = (
        InputText(text=message.content)
        if message.role == "user"
        else OutputText(text=message.content)
    )
    return ConversationItem(id=item_id(message), role=message.role, content=[text])


class ConversationsController(Controller):
    path = "/conversations"
    tags = ["openai"]  # noqa: RUF012  (Litestar reads it as a class attribute)
    dependencies = {"caller": Provide(caller_of, sync_to_thread=False)}  # noqa: RUF012

    @post(
        "/",
        status_code=200,
        responses=OPENAI_ERRORS,
        summary="Create a conversation (a session of this service)",
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        caller: NamedDependency[Caller],
        data: JSONBody[ConversationCreate],
    ) -> Conversation:
        metadata = strictly(await request.body(), ConversationCreate).metadata or {}
        session_id, info = await caller.services.conversations.create(caller.namespace, metadata)
        note_session(session_id)
        return Conversation(
            id=session_id, created_at=_epoch(info.created_at), metadata=info.metadata
        )

    @get(
        "/{conversation_id:str}",
        responses=OPENAI_SHOW_ERRORS,
        summary="A conversation: any session of this token",
    )
    async def show(
        self, conversation_id: SessionIdInPath, caller: NamedDependency[Caller]
    ) -> Conversation:
        note_session(conversation_id)
        info, _ = await caller.services.conversations.show(caller.namespace, conversation_id)
        return Conversation(
            id=conversation_id.strip(), created_at=_epoch(info.created_at), metadata=info.metadata
        )

    @delete(
        "/{conversation_id:str}",
        status_code=200,
        responses=OPENAI_SHOW_ERRORS,
        summary="Delete a conversation and its history",
    )
    async def forget(
        self, conversation_id: SessionIdInPath, caller: NamedDependency[Caller]
    ) -> ConversationDeleted:
        note_session(conversation_id)
        await caller.services.conversations.delete(caller.namespace, conversation_id)
        return ConversationDeleted(id=conversation_id.strip())

    @get(
        "/{conversation_id:str}/items",
        responses=OPENAI_SHOW_ERRORS,
        summary="A conversation's stored messages",
    )
    async def items(
        self,
        conversation_id: SessionIdInPath,
        caller: NamedDependency[Caller],
        after: Annotated[str | None, QueryParameter(description="An item id")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=ITEMS_MAX_LIMIT)] = 20,
        order: Annotated[Literal["asc", "desc"], QueryParameter()] = "desc",
    ) -> ConversationItems:
        """Newest first unless order=asc; `after` an item id, for the next page."""
        note_session(conversation_id)
        _, messages = await caller.services.conversations.show(caller.namespace, conversation_id)
        listed = [_item(message) for message in messages]
        if order == "desc":
            listed.reverse()
        if after is not None:
            ids = [item.id for item in listed]
            if after not in ids:
                raise NotFoundException(f"after: no item {after!r} in this conversation")
            listed = listed[ids.index(after) + 1 :]
        page = listed[:limit]
        return ConversationItems(
            data=page,
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
            has_more=len(listed) > limit,
        )
