"""The floor: the shared benchmark settings with no upload app at all (see views.py)."""

from common_settings import *  # noqa: F403

ROOT_URLCONF = "floor_site.urls"
WSGI_APPLICATION = "floor_site.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

FLOOR_UPLOAD_DIR = UPLOAD_DIR  # noqa: F405
