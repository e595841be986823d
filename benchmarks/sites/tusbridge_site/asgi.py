"""tusbridge's site under an ASGI server (uvicorn), for the S8/S9 deployment ``tusbridge-asgi``.

tusbridge's own ASGI entry point when this checkout has one (``tusbridge.asgi``),
else Django's.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tusbridge_site.settings")

try:
    from tusbridge.asgi import get_asgi_application
except ImportError:
    from django.core.asgi import get_asgi_application

application = get_asgi_application()
