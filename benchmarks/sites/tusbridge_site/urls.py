from django.urls import include, path

urlpatterns = [
    path("files/", include("tusbridge.urls")),
    path("api/", include("tusbridge.chunked_upload.urls")),
]
