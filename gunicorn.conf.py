"""gunicorn settings for the loan API (``gunicorn -c gunicorn.conf.py webapp.wsgi:app``).

Each worker process opens its own database pool on its first request.
"""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8181')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("FLOWS_WEB_THREADS", "4"))
timeout = 30
graceful_timeout = 10
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("FLOWS_LOG_LEVEL", "info").lower()
# gunicorn >= 25 opens a control socket at one fixed path per user; several
# servers on one machine (tests, a second checkout) would fight over it.
control_socket_disable = True
