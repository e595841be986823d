"""The example's only page of its own: how to upload to this server."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def home(request: HttpRequest) -> HttpResponse:
    """Explain uploading with curl and tuspy, filled in with this server's URLs."""
    base_url = request.build_absolute_uri("/").rstrip("/")
    context = {
        "base_url": base_url,
        "files_url": f"{base_url}/files/",
        "login_url": f"{base_url}/accounts/login/",
        "allow_anonymous": getattr(settings, "TUSBRIDGE_ALLOW_ANONYMOUS", False),
        "max_size": settings.TUSBRIDGE_MAX_SIZE,
    }
    return render(request, "example_site/home.html", context)
