from django.urls import path

from .views import chunk, complete

urlpatterns = [
    path("api/chunked_upload/", chunk),
    path("api/chunked_upload_complete/", complete),
]
