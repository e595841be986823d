from django.urls import path

from .views import AnonymousChunkedUploadCompleteView, AnonymousChunkedUploadView

urlpatterns = [
    path("api/chunked_upload/", AnonymousChunkedUploadView.as_view(), name="api_chunked_upload"),
    path(
        "api/chunked_upload_complete/", AnonymousChunkedUploadCompleteView.as_view(), name="api_chunked_upload_complete"
    ),
]
