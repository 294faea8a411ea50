"""The project's views: plain sync Django views that start jobs and publish with the sync
``Publisher``, the way a Django project without async code talks to a hub.

- ``POST /tasks/`` creates a task on the hub *as the logged-in user* (so only they may
  watch it) and runs the job in a thread, which reports with ``Publisher.track()`` under
  the worker's token and, at the end, notifies the user on ``users/<id>/notifications``.
- ``POST /tasks/<id>/cancel/`` cancels it, again as the user: the hub answers ``404`` for
  a task that is not theirs, and the view passes that on.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST
from examples.django_app.hub import token_for, worker_token

from tidings.client import Publisher
from tidings.errors import TaskFinished, TaskNotFound

logger = logging.getLogger(__name__)

#: The most steps a job may have.
MAX_STEPS = 1000


def user_id(request: HttpRequest) -> str:
    """The logged-in user's id as the hub knows it (its principal's ``user``)."""
    return str(request.user.pk)


@login_required
def index(request: HttpRequest) -> HttpResponse:
    """The page: start jobs and watch each one's progress bar (``tidings.js``)."""
    return render(request, "index.html", {"user_id": user_id(request)})


@login_required
@require_POST
def start_task(request: HttpRequest) -> HttpResponse:
    """Start a job of ``steps`` steps; answer its task id (202)."""
    try:
        steps = int(request.POST.get("steps", "20"))
    except ValueError:
        return HttpResponseBadRequest("steps must be a number")
    if not 1 <= steps <= MAX_STEPS:
        return HttpResponseBadRequest(f"steps must be 1 to {MAX_STEPS}")
    owner = user_id(request)
    task_id = uuid.uuid4().hex
    title = f"Job of {steps} steps"
    with Publisher(settings.TIDINGS_HUB_URL, token=token_for(owner)) as pub:
        pub.create_task(task_id=task_id, title=title, total=steps)
    threading.Thread(
        target=run_job, args=(task_id, steps, owner), name=f"job-{task_id}", daemon=True
    ).start()
    return JsonResponse({"task_id": task_id, "title": title}, status=202)


@login_required
@require_POST
def cancel_task(request: HttpRequest, task_id: str) -> HttpResponse:
    """Cancel one of the user's jobs; the job learns it at its next report and stops."""
    owner = user_id(request)
    try:
        with Publisher(settings.TIDINGS_HUB_URL, token=token_for(owner)) as pub:
            pub.cancel(task_id, reason=f"cancelled by {request.user.get_username()}")
    except TaskNotFound:
        return JsonResponse({"error": "no such task"}, status=404)
    except TaskFinished:
        return JsonResponse({"error": "the task is over"}, status=409)
    return JsonResponse({"task_id": task_id, "status": "cancelled"})


def run_job(task_id: str, steps: int, owner: str) -> None:
    """The job, in a thread: ``steps`` units of "work", each reported to the hub."""
    with Publisher(settings.TIDINGS_HUB_URL, token=worker_token()) as pub:
        try:
            with pub.track(task_id, total=steps) as tracker:
                for step in range(1, steps + 1):
                    time.sleep(settings.STEP_DELAY)  # the work itself
                    tracker.update(1, message=f"step {step} of {steps}")
                tracker.result = {"steps": steps}
        except TaskFinished:
            status = "cancelled"  # by the user, elsewhere: the next report said so
        else:
            status = "completed"
        logger.info("job %s %s", task_id, status)
        pub.publish(
            f"users/{owner}/notifications",
            {"task_id": task_id, "status": status},
            type="job_done",
        )
