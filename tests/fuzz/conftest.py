"""Fixtures of the fuzz and property tests. None of their own yet: the shared ones are in ``tests/conftest.py``;
the input counts and shared strategies are in ``tests/support/fuzz.py``.
"""
