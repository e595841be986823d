"""Delete expired unfinished uploads (record and data). Safe to run from cron on several hosts."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from ...service import get_service


class Command(BaseCommand):
    help = "Delete unfinished uploads whose expiry time has passed (their records and data files)."

    def handle(self, *args: Any, **options: Any) -> None:
        count = get_service().expire_due()
        self.stdout.write(f"{count} expired uploads were deleted.")
