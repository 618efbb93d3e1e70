"""Implementations of the application's ports: Redis, in-memory, LLM providers, scheduling."""
