"""What the example keeps of a finished upload (tusbridge itself keeps records in Redis only)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class FinishedUpload(models.Model):
    """One completed upload, recorded by the ``upload_completed`` receiver.

    ``size`` and ``sha256`` are what the server read back from the finished
    file, so a page can show them next to what the browser sent.
    ``protocol`` is the protocol that created the upload, ``finished_with``
    the one whose request completed it (they differ for migrated uploads).
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE)
    upload_id = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=255)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    protocol = models.CharField(max_length=16)
    finished_with = models.CharField(max_length=16)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.size} bytes, {self.upload_id})"

    def as_json(self) -> dict[str, object]:
        return {
            "upload_id": self.upload_id,
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "protocol": self.protocol,
            "finished_with": self.finished_with,
            "created": self.created.isoformat(),
        }
