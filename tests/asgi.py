"""ASGI entry point of the test project (uvicorn), with tusbridge's streaming handler."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from tusbridge.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
