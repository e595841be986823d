"""Mount with ``path("files/", include("tusbridge.urls"))``."""

from django.urls import path, re_path

from .tus.views import TusView

app_name = "tusbridge"

urlpatterns = [
    path("", TusView.as_view(), name="collection"),
    re_path(r"^(?P<upload_id>[A-Za-z0-9_-]{1,64})/?$", TusView.as_view(), name="upload"),
]
