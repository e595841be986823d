"""A tiny project app for the legacy-protocol tests: a model with a FileField.

Its model declares ``app_label`` so the module imports even while the app is
not in INSTALLED_APPS; tests/legacy/test_project.py installs it per test and
creates its table when the test database was built without it.
"""
