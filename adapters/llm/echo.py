"""The offline default: no network, deterministic, and plain about what it is."""

from domain.conversation import Conversation


class EchoModel:
    async def reply(self, conversation: Conversation) -> str:
        earlier = len(conversation.messages) - 1
        return (
            f"[echo: offline test model, no LLM provider configured] You said: "
            f"{conversation.last_user_message} ({earlier} earlier messages in this session)"
        )
