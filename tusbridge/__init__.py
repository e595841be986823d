"""tusbridge: resumable uploads for Django over tus 1.0 and the legacy chunked-upload protocol."""

__version__ = "0.1.0"
