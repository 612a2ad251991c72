"""The pre-fork supervisor of a flows worker fleet.

``flows supervise --app MODULE`` (or ``python -m flows.supervisor``) forks
one worker process per shard group, restarts the ones that die (releasing
their leases at once), and stops them gracefully on SIGTERM. See ``docs/fleet.md``.

Modules: ``arbiter`` (the supervisor's loop), ``child`` (fork and the worker
process), ``exits`` (exit codes), ``logs`` (one line per event on stderr).
"""
