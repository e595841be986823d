"""The tus 1.0 protocol: HTTP in, upload service calls out."""
