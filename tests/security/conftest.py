"""Fixtures of the security tests. None of their own yet: the shared ones are in ``tests/conftest.py``."""
