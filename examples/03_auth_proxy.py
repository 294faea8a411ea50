"""A Flask app whose session cookie authenticates streams on a standalone hub, no JWTs.

The hub (``tidings serve --auth-proxy URL``) asks the app's ``GET /tidings/auth`` who
opens each stream, passing on the browser's cookies: the endpoint reads its own session
and answers with the caller's claims (the JSON of a tidings JWT's claims), or 401. The
same endpoint recognises the app's own service key, with which the app publishes
(``--auth-proxy-publish`` lets the endpoint authenticate writes too). Django and Rails
apps do the same with a view that reads their session (docs/security.md, "Auth proxy").

Run it (it starts the hub beside the app):

    python examples/03_auth_proxy.py

then, in another terminal (curl sends the app's cookie to the hub too: same host):

    curl -c jar -X POST 'http://127.0.0.1:5000/login?user=alice'
    curl -b jar -N 'http://127.0.0.1:8000/events?topic=users/alice/**&topic=lobby'
    curl -b jar -X POST http://127.0.0.1:5000/notes -H 'content-type: application/json' \\
        -d '{"text": "remember the milk"}'
"""

from __future__ import annotations

import hmac
import os
import secrets
import signal
import subprocess
import sys
from types import FrameType

from flask import Flask, abort, jsonify, request, session
from flask.typing import ResponseReturnValue

from tidings.client import Publisher

PORT = int(os.environ.get("PORT", "5000"))
HUB_URL = f"http://127.0.0.1:{os.environ.get('HUB_PORT', '8000')}"
#: The key the app publishes with; only the app and its auth endpoint know it.
SERVICE_KEY = os.environ.get("SERVICE_KEY") or secrets.token_urlsafe(32)

app = Flask(__name__)
app.secret_key = os.environ.get("SESSION_KEY") or secrets.token_hex(32)
app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")
publisher = Publisher(HUB_URL, token=SERVICE_KEY)


@app.get("/tidings/auth")
def tidings_auth() -> ResponseReturnValue:
    """The hub's question: who is this? Claims as in a tidings JWT, or 401.

    Signed-in users may read ``lobby`` (and, as always, their own ``users/<id>/**``);
    the app itself, with its service key, may publish on ``lobby`` and users' topics.
    """
    header = request.headers.get("Authorization", "")
    if hmac.compare_digest(header, f"Bearer {SERVICE_KEY}"):
        return jsonify(sub="app", tidings={"publish": ["lobby", "users/**"]})
    user = session.get("user")
    if user is None:
        return jsonify(error="not signed in"), 401
    return jsonify(sub=user, tidings={"subscribe": ["lobby"], "publish": []})


@app.post("/login")
def login() -> ResponseReturnValue:
    """A stand-in for the app's real login: puts the user in Flask's signed session."""
    user = request.args.get("user", "")
    if not user.isalnum():
        abort(400)
    session["user"] = user
    return {"user": user}


@app.post("/notes")
def add_note() -> ResponseReturnValue:
    """An app endpoint: save the note (not shown), then push it to the user's streams."""
    user = session.get("user")
    if user is None:
        abort(401)
    text = (request.get_json(silent=True) or {}).get("text", "")
    event_id = publisher.publish(f"users/{user}/notes", {"text": text}, type="note")
    return {"id": event_id}


def start_hub() -> subprocess.Popen[bytes]:
    """``tidings serve`` asking this app's endpoint about every stream and publish."""
    port = HUB_URL.rpartition(":")[2]
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tidings",
            "serve",
            "--port",
            port,
            "--store",
            "memory",
            "--auth-proxy",
            f"http://127.0.0.1:{PORT}/tidings/auth",
            "--auth-proxy-publish",
            # Pages of the app (another port: another origin) may open streams with
            # their cookies: new EventSource(url, {withCredentials: true}).
            "--cors-origin",
            f"http://127.0.0.1:{PORT}",
        ]
    )


def main() -> None:
    hub = start_hub()

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)  # unwinds the server loop, so the hub is stopped below

    signal.signal(signal.SIGTERM, stop)
    try:
        print(f"app: http://127.0.0.1:{PORT}/   hub: {HUB_URL}/", flush=True)
        app.run(host="127.0.0.1", port=PORT, threaded=True)
    finally:
        hub.terminate()
        hub.wait(15)
        publisher.close()


if __name__ == "__main__":
    main()
