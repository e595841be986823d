"""The kind of model a project saves its finished chunked uploads into."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Document(models.Model):
    file = models.FileField(upload_to="documents/%Y/")
    title = models.CharField(max_length=200, blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        app_label = "legacyapp"

    def __str__(self) -> str:
        return self.title or self.file.name
