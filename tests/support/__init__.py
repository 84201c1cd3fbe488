"""Helpers that start the real services the tests need: dockerd and PostgreSQL."""
