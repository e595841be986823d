"""Status values and HTTP status names of the legacy protocol."""

from django.utils.translation import gettext_lazy as _


class http_status:  # noqa: N801 - the legacy name projects import
    HTTP_200_OK = 200
    HTTP_400_BAD_REQUEST = 400
    HTTP_403_FORBIDDEN = 403
    HTTP_404_NOT_FOUND = 404
    HTTP_405_METHOD_NOT_ALLOWED = 405
    HTTP_409_CONFLICT = 409
    HTTP_410_GONE = 410
    HTTP_503_SERVICE_UNAVAILABLE = 503
    HTTP_507_INSUFFICIENT_STORAGE = 507


UPLOADING = 1
COMPLETE = 2

CHUNKED_UPLOAD_CHOICES = (
    (UPLOADING, _("Uploading")),
    (COMPLETE, _("Complete")),
)
