"""A Celery app whose tasks report their progress to a tidings hub.

See ``README.md`` beside this file: ``tasks.py`` holds the app and its tasks.
"""
