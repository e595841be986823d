"""URLs of the example site.

- ``/``: how to upload; ``/uppy/``, ``/legacy/``, ``/migrate/``: browser clients;
- ``/api/finished/``: the logged-in user's finished uploads (JSON);
- ``/files/``: tusbridge (tus, and legacy chunks without tus headers);
- ``/api/chunked_upload/`` + ``/api/chunked_upload_complete/``: the legacy
  protocol where django-chunked-upload's demo has it;
- ``/static/``: the example's CSS/JS and the npm packages' files.
"""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.contrib.staticfiles.views import serve as serve_static
from django.urls import include, path, re_path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("uppy/", views.uppy, name="uppy"),
    path("legacy/", views.legacy, name="legacy"),
    path("migrate/", views.migrate, name="migrate"),
    path("api/finished/", views.finished, name="finished"),
    path("api/", include("tusbridge.chunked_upload.urls")),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("files/", include("tusbridge.urls")),
    # Static files straight from the finders (app static/ and node_modules),
    # also with DEBUG off, so the example needs no collectstatic and no extra
    # server. A real site serves /static/ from its web server or WhiteNoise.
    re_path(r"^static/(?P<path>.*)$", serve_static, {"insecure": True}),
]
