"""A Celery app whose tasks report their progress to a tidings hub.

See ``README.md`` beside this file: ``tasks.py`` holds the Celery app and its tasks,
``web.py`` the FastAPI app (hub embedded) whose page streams them, and ``run.py`` runs
broker, worker and web app in one command (``python -m examples.celery_app.run``).
"""
