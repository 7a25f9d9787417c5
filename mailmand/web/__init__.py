"""The web server: the HTTP API v1 (JSON) and the dashboard, one Starlette app
served by uvicorn in a thread of the daemon (`server.py`).

Imported only when `email.server.web` is configured: a daemon without it, and
every producer, never loads Starlette, uvicorn or Jinja2.
"""
