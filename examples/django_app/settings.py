"""Django settings of the example project (see README.md): sessions and auth, SQLite.

Read from the environment by ``python -m examples.django_app``: ``DJANGO_SECRET_KEY``
(random per run if unset: logins then last one run), ``DJANGO_DB`` (the SQLite file) and
``TIDINGS_HUB_URL`` (where the project's own views reach the hub it mounts at ``/sse``).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

HERE = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50)
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "examples.django_app.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [HERE / "templates"],
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ],
        },
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB", "django_app.sqlite3"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"
# The hub reads this cookie to know who watches (hub.authenticate); Lax keeps it off
# cross-site POSTs, and the hub takes it for reads only anyway.
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_HTTPONLY = True

#: Where this project's views and job threads reach the hub (the same process, at /sse).
TIDINGS_HUB_URL = os.environ.get("TIDINGS_HUB_URL", "http://127.0.0.1:8000/sse")
#: Seconds per step of the example's job (the "work").
STEP_DELAY = float(os.environ.get("STEP_DELAY", "0.2"))
