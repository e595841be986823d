"""What the tests share that is not a fixture: helpers, the harness's servers, stand-in classes.

- ``servers``: the private redis-server and live gunicorn/uvicorn processes behind
  the fixtures of ``tests/conftest.py``.
- ``tus``, ``legacy``: in-process requests through Django's test client, and what
  they left in Redis and the upload directory.
- ``live``: requests over real HTTP (raw sockets that hold a request half-sent,
  which worker accepted it), ``LiveStorage`` for live servers.
- ``faults``: both protocols over raw sockets for the fault-injection tests,
  ``manage.py`` with a live server's settings.
- ``fuzz``: counting what the fuzz and property tests tried, shared strategies.
- ``together``: calls released in threads at the same moment.
- ``example_site``: the example project under gunicorn and headless Chromium.
- ``data``: payloads, digests, base64 and upload ids, for every kind of test.
- ``node``: ``npm ci`` for the JavaScript clients.
- ``worker_probe``, ``legacy_storage``: classes named by dotted path in settings.
"""
