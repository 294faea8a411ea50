"""``python -m examples.observability``: serve the app on http://127.0.0.1:8000 ($PORT)."""

from __future__ import annotations

import os

import uvicorn
from examples.observability.app import app

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
