"""``python -m examples.django_app``: the Django project and its hub under uvicorn.

Creates the SQLite database (``migrate``) and two demo users, ``alice`` and ``bob``
(password ``tidings-demo``), then serves the project on http://127.0.0.1:8000/ with the
hub at ``/sse``. Ctrl-C or SIGTERM ends the open streams cleanly and exits.
"""

from __future__ import annotations

import argparse
import os

import uvicorn

#: The demo users' password (a demo: real users sign up or come from your auth).
DEMO_PASSWORD = "tidings-demo"
DEMO_USERS = ("alice", "bob")


def prepare() -> None:
    """Set Django up, create its tables, and the demo users if missing."""
    import django
    from django.core.management import call_command

    django.setup()
    from django.contrib.auth.models import User  # once Django is set up

    call_command("migrate", verbosity=0, interactive=False)
    for name in DEMO_USERS:
        if not User.objects.filter(username=name).exists():
            User.objects.create_user(username=name, password=DEMO_PASSWORD)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.django_app")
    parser.add_argument("--port", type=int, default=8000, help="where to serve (default 8000)")
    parser.add_argument("--db", default="django_app.sqlite3", help="Django's SQLite file")
    parser.add_argument("--step-delay", type=float, default=0.2, help="seconds per job step")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
    os.environ["DJANGO_DB"] = args.db
    os.environ["STEP_DELAY"] = str(args.step_delay)
    # The views reach the hub in this same process, over HTTP, as they would a hub elsewhere.
    os.environ["TIDINGS_HUB_URL"] = f"http://127.0.0.1:{args.port}/sse"
    prepare()
    print(
        f"http://127.0.0.1:{args.port}/  (log in as {' or '.join(DEMO_USERS)}, "
        f"password {DEMO_PASSWORD}; the hub's dashboard is at /sse/)",
        flush=True,
    )
    uvicorn.run("examples.django_app.asgi:application", host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
