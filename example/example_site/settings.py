"""Settings of the example site: a minimal project with tusbridge at ``/files/``.

Everything that differs between a laptop and a container comes from the
environment: ``REDIS_URL``, ``TUSBRIDGE_UPLOAD_DIR``, ``TUSBRIDGE_ALLOW_ANONYMOUS``,
``TUSBRIDGE_MAX_SIZE``, ``DJANGO_DEBUG``, ``DJANGO_ALLOWED_HOSTS``,
``DJANGO_SECRET_KEY`` and ``EXAMPLE_VAR_DIR`` (database, secret key, uploads).

The browser clients (Uppy, jQuery-File-Upload, SparkMD5, tus-js-client) come
from npm: ``npm ci`` in ``example/`` (``make demo`` runs it) installs them into
``example/node_modules``, and staticfiles serves their ``dist`` folders from
there under ``/static/<package>/``. Nothing is loaded from a CDN.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("EXAMPLE_VAR_DIR", BASE_DIR / "var")).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _persistent_secret_key() -> str:
    """A random key kept in VAR_DIR, created once.

    All gunicorn workers must sign sessions with the same key, and logins
    should survive a restart, so a per-process random key would not do.
    The file is published with a hard link, which fails if another worker
    got there first; then that worker's key is used.
    """
    path = VAR_DIR / "secret_key"
    if not path.exists():
        tmp = VAR_DIR / f".secret_key.{os.getpid()}"
        tmp.write_text(secrets.token_urlsafe(50))
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or _persistent_secret_key()
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "tusbridge",
    "example_site",  # templates, static files, the FinishedUpload model
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Lets the upload_completed receiver see which protocol finished an upload.
    "example_site.middleware.current_request_middleware",
]

ROOT_URLCONF = "example_site.urls"
WSGI_APPLICATION = "example_site.wsgi.application"

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

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": VAR_DIR / "db.sqlite3",
        # Two gunicorn workers write to one file: wait for the other's lock.
        "OPTIONS": {"timeout": 20},
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

# --- static files ------------------------------------------------------------
# The example's own CSS/JS live in example_site/static/; the clients' files are
# served straight out of the npm packages' dist folders (no build step, no
# collectstatic): example_site/urls.py routes /static/ to staticfiles' finders.
STATIC_URL = "/static/"
NODE_MODULES = BASE_DIR / "node_modules"
NPM_STATIC_DIRS = {
    "uppy": NODE_MODULES / "uppy" / "dist",  # uppy.min.js (global Uppy) + uppy.min.css
    "jquery": NODE_MODULES / "jquery" / "dist",
    "blueimp-file-upload": NODE_MODULES / "blueimp-file-upload" / "js",
    "spark-md5": NODE_MODULES / "spark-md5",
    "tus-js-client": NODE_MODULES / "tus-js-client" / "dist",
}
# Only folders that exist: before `npm ci` the pages say what is missing
# instead of `manage.py check` warning about absent directories.
STATICFILES_DIRS = [(prefix, str(path)) for prefix, path in NPM_STATIC_DIRS.items() if path.is_dir()]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django.request": {"handlers": ["stderr"], "level": "ERROR"},
        "tusbridge": {"handlers": ["stderr"], "level": "INFO"},
    },
}

# --- tusbridge -------------------------------------------------------------
TUSBRIDGE_REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6390/0")
TUSBRIDGE_KEY_PREFIX = os.environ.get("TUSBRIDGE_KEY_PREFIX", "tusbridge-example")
TUSBRIDGE_UPLOAD_DIR = os.environ.get("TUSBRIDGE_UPLOAD_DIR", str(VAR_DIR / "uploads"))
TUSBRIDGE_MAX_SIZE = int(os.environ.get("TUSBRIDGE_MAX_SIZE", str(1024**3)))
if os.environ.get("TUSBRIDGE_ALLOW_ANONYMOUS") == "1":
    TUSBRIDGE_ALLOW_ANONYMOUS = True
