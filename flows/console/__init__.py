"""The web console: a Flask blueprint any Flask app mounts.

    from flows.console import console_blueprint
    app.register_blueprint(console_blueprint(lambda: engine), url_prefix="/console")

Server-rendered pages (workflows, one workflow with why it is not moving,
dead letters, the fleet) over the public ``Engine`` API; htmx refreshes the
live parts and uPlot draws the fleet's chart, both served from the
blueprint's static folder. Every action is a POST carrying the CSRF token
of the console's signed cookie.
"""

from flows import extras

extras.require("flask", "console", "the web console (flows.console)")

from flows.console.views import Access, console_blueprint  # noqa: E402 - after the check of the extra

__all__ = ["Access", "console_blueprint"]
