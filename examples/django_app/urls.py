"""The project's URLs (the hub's are under /sse, routed in asgi.py before Django)."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path
from examples.django_app import views

urlpatterns = [
    path("", views.index, name="index"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("tasks/", views.start_task, name="start_task"),
    path("tasks/<str:task_id>/cancel/", views.cancel_task, name="cancel_task"),
]
