"""The legacy URLs where django-chunked-upload's demo mounts them.

``path("api/", include("tusbridge.chunked_upload.urls"))`` serves
``api/chunked_upload/`` and ``api/chunked_upload_complete/``. Projects with
their own view subclasses route those instead, as before.
"""

from django.urls import path

from .views import ChunkedUploadCompleteView, ChunkedUploadView

app_name = "chunked_upload"

urlpatterns = [
    path("chunked_upload/", ChunkedUploadView.as_view(), name="chunked_upload"),
    path("chunked_upload_complete/", ChunkedUploadCompleteView.as_view(), name="chunked_upload_complete"),
]
