from datetime import UTC, datetime

from domain.conversation import build_conversation
from domain.message import Message

T = datetime(2026, 1, 1, tzinfo=UTC)


def msg(role: str, content: str) -> Message:
    return Message(role, content, T)  # type: ignore[arg-type]


def test_model_sees_history_then_the_question() -> None:
    history = [msg("user", "q1"), msg("assistant", "a1")]
    conversation = build_conversation("be brief", history, msg("user", "q2"))
    assert conversation.system_prompt == "be brief"
    assert [m.content for m in conversation.messages] == ["q1", "a1", "q2"]


def test_a_history_trimmed_to_start_with_a_reply_drops_that_reply() -> None:
    history = [msg("assistant", "a0"), msg("user", "q1"), msg("assistant", "a1")]
    conversation = build_conversation("", history, msg("user", "q2"))
    assert conversation.system_prompt is None
    assert [m.content for m in conversation.messages] == ["q1", "a1", "q2"]
