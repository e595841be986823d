"""The tus 1.0 protocol and its extensions, in-process (Django test client), with a few large bodies through live
gunicorn.
"""
