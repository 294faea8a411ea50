"""Realtime notifications in a FastAPI app with an embedded tidings hub.

See ``README.md`` beside this file; ``app.py`` holds the app (``python -m
examples.notifications`` serves it).
"""
