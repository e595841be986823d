"""Fixtures of the live tests. None of their own yet: ``gunicorn_server``, ``gunicorn_factory`` and ``session``
are in ``tests/conftest.py``; helpers in ``tests/support/live.py``.
"""
