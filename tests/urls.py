"""URLconf for the test suite: tusbridge at ``files/`` plus test-only helpers.

Live-server tests talk to gunicorn over HTTP and cannot use Django's test
client to log in, so ``test-login/`` hands out a session cookie for any
username. It exists only in this test URLconf.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST


@csrf_exempt
@require_POST
def test_login(request: HttpRequest) -> HttpResponse:
    """Log in (creating if needed) the user named by the ``username`` POST field."""
    username = request.POST.get("username", "").strip()
    if not username:
        return JsonResponse({"detail": "username is required"}, status=400)
    user, _ = get_user_model().objects.get_or_create(username=username)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return JsonResponse({"username": user.get_username(), "id": user.pk})


@require_GET
def test_whoami(request: HttpRequest) -> HttpResponse:
    """Report the serving process, the session's user and the tusbridge settings.

    Lets harness tests check that settings passed through the environment
    reached the server and that sessions are shared between workers.
    """
    user = request.user
    names = [name for name in dir(settings) if name.startswith("TUSBRIDGE_")]
    return JsonResponse(
        {
            "pid": os.getpid(),
            "username": user.get_username() if user.is_authenticated else None,
            "settings": {name: str(getattr(settings, name)) for name in names},
        }
    )


urlpatterns = [
    path("files/", include("tusbridge.urls")),
    path("test-login/", test_login, name="test-login"),
    path("test-whoami/", test_whoami, name="test-whoami"),
]
