"""``python -m examples.celery_app [COUNT]``: enqueue a conversion, print how to watch it.

This is what a web view does: ``start_conversion()`` creates the hub task and enqueues the
Celery task with the same id. (The tasks live in ``tasks.py``, not here: a task defined in
``__main__`` would get a name that no worker knows.)
"""

from __future__ import annotations

import os
import sys

from examples.celery_app.tasks import start_conversion

if __name__ == "__main__":
    task_id = start_conversion(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
    hub = os.environ.get("TIDINGS_URL", "http://127.0.0.1:8000")
    print(task_id)
    print(f"watch it:  tidings tail tasks/{task_id}")
    print(f"       or  curl -N {hub}/tasks/{task_id}/stream")
