from django.urls import path
from django_tus.views import TusUpload

urlpatterns = [
    path("files/", TusUpload.as_view(), name="tus_upload"),
    path("files/<uuid:resource_id>", TusUpload.as_view(), name="tus_upload_chunks"),
]
