"""What gunicorn serves: ``gunicorn -c gunicorn.conf.py webapp.wsgi:app``."""

from webapp import create_app

app = create_app()
