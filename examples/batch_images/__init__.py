"""Batch image processing: upload N files, watch each file and the whole batch live.

See ``README.md`` beside this file; ``app.py`` holds the app (``python -m
examples.batch_images`` serves it).
"""
