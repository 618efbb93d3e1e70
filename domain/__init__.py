"""Pure entities and rules of a chat: messages, session ids, conversations. No I/O."""
