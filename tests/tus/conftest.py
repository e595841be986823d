"""Fixtures of the tus protocol tests. None of their own yet: ``t``, ``redis_client``, ``completions`` and
``other_client`` are in ``tests/conftest.py`` (the security and fuzz tests use them too); helpers in
``tests/support/tus.py``.
"""
