"""Django settings for the test suite.

The same module serves pytest's in-process tests and the gunicorn servers
that live tests start, so everything that differs between runs (which Redis,
which key prefix, where uploads go, which database file) comes from
``TUSBRIDGE_TEST_*`` environment variables set by ``tests/conftest.py``.
In-process tests override the TUSBRIDGE_* values per test through
pytest-django's ``settings`` fixture.
"""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "tusbridge-tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "tusbridge",
    "tests.legacyapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "tests.urls"
WSGI_APPLICATION = "tests.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# pytest-django swaps this for an in-memory test database; a gunicorn server
# started by the fixtures gets a migrated file shared by its two workers.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("TUSBRIDGE_TEST_DB_PATH", ":memory:"),
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# Fast hashing: tests create users often and never need real password strength.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Send request errors to stderr, which the gunicorn fixture captures and shows
# for failing live tests.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django.request": {"handlers": ["stderr"], "level": "ERROR"},
        "tusbridge": {"handlers": ["stderr"], "level": "WARNING"},
    },
}


def _env_flag(name: str, default: bool = False) -> bool:
    """Read a boolean from the environment ("1", "true", "yes" are true)."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


# --- tusbridge -------------------------------------------------------------
# Deliberately unreachable default: tests must never fall through to the
# machine's shared Redis on 6379. The fixtures always supply a private server.
TUSBRIDGE_REDIS_URL = os.environ.get("TUSBRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:1/0")
TUSBRIDGE_KEY_PREFIX = os.environ.get("TUSBRIDGE_TEST_KEY_PREFIX", "tusbridge-test")
TUSBRIDGE_UPLOAD_DIR = os.environ.get(
    "TUSBRIDGE_TEST_UPLOAD_DIR",
    os.path.join(tempfile.gettempdir(), "tusbridge-test-uploads"),
)
TUSBRIDGE_ALLOW_ANONYMOUS = _env_flag("TUSBRIDGE_TEST_ALLOW_ANONYMOUS")

# Optional settings: only defined when the environment asks for them, so the
# app's own defaults are what the suite exercises otherwise.
if "TUSBRIDGE_TEST_MAX_SIZE" in os.environ:
    TUSBRIDGE_MAX_SIZE = int(os.environ["TUSBRIDGE_TEST_MAX_SIZE"])
if "TUSBRIDGE_TEST_EXPIRY_SECONDS" in os.environ:
    TUSBRIDGE_EXPIRY = timedelta(seconds=float(os.environ["TUSBRIDGE_TEST_EXPIRY_SECONDS"]))
if "TUSBRIDGE_TEST_STORAGE" in os.environ:
    _storage = os.environ["TUSBRIDGE_TEST_STORAGE"]
    TUSBRIDGE_STORAGE = None if _storage in {"", "none", "None"} else _storage
if "TUSBRIDGE_TEST_PERMISSION" in os.environ:
    TUSBRIDGE_PERMISSION = os.environ["TUSBRIDGE_TEST_PERMISSION"]

# Timing settings the live tests shorten (seconds, or bytes for READ_SIZE).
for _name, _convert in (
    ("LOCK_WAIT", float),
    ("LOCK_TTL", float),
    ("POLL_INTERVAL", float),
    ("IDLE_TIMEOUT", float),
    ("READ_SIZE", int),
    ("MAX_UPLOADS_PER_USER", int),
    ("MAX_BYTES_PER_USER", int),
    ("MAX_UPLOADS_PER_ADDRESS", int),
    ("MAX_BYTES_PER_ADDRESS", int),
    ("CREATIONS_PER_MINUTE", int),
    ("TRUSTED_PROXY_COUNT", int),
    ("PROGRESS_INTERVAL", float),
    ("PROGRESS_BYTES", int),
    ("REDIS_TIMEOUT", float),
    ("REDIS_MAX_CONNECTIONS", int),
    ("KEEPALIVE_LINGER", float),
):
    if f"TUSBRIDGE_TEST_{_name}" in os.environ:
        globals()[f"TUSBRIDGE_{_name}"] = _convert(os.environ[f"TUSBRIDGE_TEST_{_name}"])
