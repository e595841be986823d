#!/usr/bin/env python
"""Prepare the example site: migrate the database and (re)set the demo user.

Run before starting the server (``scripts/demo.sh`` and the container do).
The ``demo`` user gets a fresh random password on every run, printed here,
so no fixed credential ever ships with the example (set ``DEMO_PASSWORD`` to
choose one instead).
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_site.settings")

    import django

    django.setup()

    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    Path(settings.TUSBRIDGE_UPLOAD_DIR).mkdir(parents=True, exist_ok=True)

    password = os.environ.get("DEMO_PASSWORD") or secrets.token_urlsafe(12)
    user, _ = get_user_model().objects.get_or_create(username="demo")
    user.set_password(password)
    user.save()

    anonymous = getattr(settings, "TUSBRIDGE_ALLOW_ANONYMOUS", False)
    print("tusbridge example is ready")
    print(f"  database:   {settings.DATABASES['default']['NAME']}")
    print(f"  uploads:    {settings.TUSBRIDGE_UPLOAD_DIR}")
    print(f"  redis:      {settings.TUSBRIDGE_REDIS_URL}")
    print(f"  anonymous uploads: {'allowed' if anonymous else 'not allowed'}")
    print(f"  log in as:  demo / {password}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
