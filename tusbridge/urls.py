"""Mount with ``path("files/", include("tusbridge.urls"))``.

- ``files/``: tus creation, and legacy chunks (multipart POSTs without Tus-Resumable);
- ``files/complete/``: legacy completion (upload_id + md5);
- ``files/<id>``: one upload over tus (HEAD, PATCH, DELETE).
"""

from django.urls import path, re_path

from .views import collection, legacy_complete, upload

app_name = "tusbridge"

urlpatterns = [
    path("", collection, name="collection"),
    path("complete/", legacy_complete, name="complete"),
    # Any segment reaches the view, so that an unknown id is a tus 404 (with Tus-Resumable).
    re_path(r"^(?P<upload_id>[^/]+)/?$", upload, name="upload"),
]
