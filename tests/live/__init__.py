"""Real HTTP against live gunicorn/uvicorn servers: both protocols, the worker class, the ASGI handler and real
tus clients.
"""
