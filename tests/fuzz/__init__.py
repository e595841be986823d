"""Property tests (hypothesis) and generated requests (schemathesis)."""
