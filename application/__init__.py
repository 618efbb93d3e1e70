"""Use cases of the chat service; they talk to the world only through the ports."""
