"""gunicorn settings for the loan API (``gunicorn -c gunicorn.conf.py webapp.wsgi:app``).

Each worker process opens its own database pool on its first request.

The worker class is gevent by default: every connection is a greenlet, so a
client that sends its request slowly (a header line a second) holds a
greenlet and a socket, not one of a few threads, and is cut off once it has
taken ``keepalive`` seconds over its request headers; ``/healthz`` and
everyone else are still served (loadtest/slowclients.py measures it). Database calls
yield too (psycopg waits cooperatively once gevent has patched the process);
at most ``FLOWS_POOL_SIZE`` run at once per process, and a request that
cannot get a connection within ``FLOWS_POOL_TIMEOUT`` gets a 503.
``FLOWS_WEB_WORKER_CLASS=gthread`` serves with threads instead
(``FLOWS_WEB_THREADS`` per process), which a slow client can starve.
"""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8181')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = os.environ.get("FLOWS_WEB_WORKER_CLASS", "gevent")
worker_connections = int(os.environ.get("FLOWS_WEB_CONNECTIONS", "1000"))  # per process (gevent)
threads = int(os.environ.get("FLOWS_WEB_THREADS", "4"))  # per process (gthread)
keepalive = 5  # seconds an idle kept-alive connection stays open; gevent: also for a request's headers
timeout = 30
graceful_timeout = 10
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("FLOWS_LOG_LEVEL", "info").lower()
# gunicorn >= 25 opens a control socket at one fixed path per user; several
# servers on one machine (tests, a second checkout) would fight over it.
control_socket_disable = True


# Prometheus metrics (docs/metrics.md): each gunicorn worker writes its own
# files in this server's directory, made fresh at start, and /metrics adds
# them up; a dead worker's live gauges are dropped, its counts kept.
def on_starting(server: object) -> None:
    from flows import metrics

    metrics.fresh_directory("web")  # before any worker forks: they inherit it


def child_exit(server: object, worker: object) -> None:
    from flows import metrics

    metrics.process_dead(worker.pid)  # type: ignore[attr-defined]


def on_exit(server: object) -> None:
    from flows import metrics

    metrics.remove_directory(os.environ.get(metrics.DIRECTORY_VARIABLE, ""))


def worker_exit(server: object, worker: object) -> None:
    # Close the worker's database pool while gevent still runs: left to the
    # interpreter's exit, the pool's __del__ fails under gevent ("greenlet is
    # being finalized") and prints a traceback at every shutdown.
    from webapp.extension import client

    app = getattr(worker, "wsgi", None)  # None when the app failed to load
    if app is not None:
        client.close(app)
