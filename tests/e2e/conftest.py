"""Fixtures live in tests/conftest.py (shared with the chaos tests)."""
