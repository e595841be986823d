"""The example project's pages in headless Chromium (Uppy, jQuery-File-Upload, the migration page)."""
