"""A Flask app with database-backed background jobs, watched live through a tidings hub.

See ``README.md`` beside this file; ``app.py`` holds the app, ``__main__.py`` runs it with
its hub (``python -m examples.flask_tasks``).
"""
