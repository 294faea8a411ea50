"""An observability dashboard: an app's requests, live, through tidings.

See ``README.md`` beside this file; ``app.py`` holds the app (``python -m
examples.observability`` serves it).
"""
