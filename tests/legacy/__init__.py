"""The legacy django-chunked-upload protocol, in-process (Django test client)."""
