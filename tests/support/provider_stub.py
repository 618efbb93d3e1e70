"""Fixture: a real HTTP server on loopback standing in for an LLM provider."""
