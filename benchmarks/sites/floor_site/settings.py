"""The floor: tusbridge's benchmark site without tusbridge (same middleware, DEBUG off, no access log)."""

from tusbridge_site.settings import *  # noqa: F403

INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "tusbridge"]  # noqa: F405
ROOT_URLCONF = "floor_site.urls"
WSGI_APPLICATION = "floor_site.wsgi.application"

FLOOR_UPLOAD_DIR = TUSBRIDGE_UPLOAD_DIR  # noqa: F405
