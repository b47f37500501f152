"""The lab at a glance: read-only web pages over the state file.

`app` has the routes and handlers, `views` and `charts` what the pages show (pure functions of
the recorded values), `templates/` their layout (Jinja2, autoescaped) and `static/` the style
sheet and the few lines of script that keep the scroll position when a page reloads itself.
`server` serves them on the daemon's listener, beside /metrics and /healthz, or alone for
`rackwatch web`. Nothing is loaded from elsewhere: lab networks are often closed.

This package sits above `render`, `metrics` and `status`, and below `daemon` and the commands.
"""

from __future__ import annotations

from rackwatch.web.app import StateSource, add_pages, pages_app
from rackwatch.web.server import DEFAULT_ADDRESS, serve_pages, start_listener

__all__ = [
    "DEFAULT_ADDRESS",
    "serve_pages",
    "start_listener",
    "add_pages",
    "pages_app",
    "StateSource",
]
