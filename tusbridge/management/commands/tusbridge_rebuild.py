"""Recreate upload records that Redis lost, from the copies kept beside the data files."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ...service import get_service


class Command(BaseCommand):
    help = (
        "Recreate upload records missing from Redis (after a restart without persistence or an eviction) "
        "from the <id>.info copies in the upload directory. Existing records are left alone."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Only list what would be rebuilt.")

    def handle(self, *args: Any, **options: Any) -> None:
        rebuilt = get_service().rebuild(dry_run=options["dry_run"])
        for upload_id in rebuilt:
            self.stdout.write(upload_id)
        verb = "would be" if options["dry_run"] else "were"
        self.stdout.write(f"{len(rebuilt)} upload records {verb} rebuilt.")
