"""Load tests and benchmarks for flows: ``python -m loadtest SCENARIO``.

Each run gets a fresh database on the server of ``DATABASE_URL`` (else the
embedded one), runs the real worker fleet (and gunicorn where HTTP is part of
the scenario) as subprocesses, and writes a table, a JSON file and a plot
under ``loadtest/results/``. ``docs/performance.md`` has the figures.
"""
