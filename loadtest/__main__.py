"""``python -m loadtest SCENARIO [options]``: run one load test, print a
table, write ``loadtest/results/<scenario>-<time>.json`` and ``.png``.

The database server is DATABASE_URL's, else the embedded one (or, with
--own-server, one of the harness's own); each run works in databases of its
own there (lt_<scenario>_<pid>_<n>), dropped at the end. Run one load test
at a time: they measure the machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

from loadtest import report, server
from loadtest.scenarios import SCENARIOS
from loadtest.session import RESULTS_DIR, Run, RunTimeout

DEFAULT_TIMEOUT_SECONDS = 300.0
DEFAULT_SHARDS = 8  # splits evenly over 1, 2, 4 or 8 workers (scaling's fleets)
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS,
                        help="seconds each repeat may take (default %(default)s)")
    common.add_argument("--repeat", type=int, default=1, help="repeats; the table shows medians (default 1)")
    common.add_argument("--shards", type=int, default=DEFAULT_SHARDS, help="FLOWS_SHARDS (default %(default)s)")
    common.add_argument("--workers", type=int, default=2, help="worker processes where one fleet runs (default 2)")
    common.add_argument("--own-server", action="store_true",
                        help="use a server of the harness's own with pg_stat_statements and commit timestamps")
    common.add_argument("--nested-statements", action="store_true",
                        help="--own-server, and count the statements the engine's SQL functions run inside them too"
                        " (a function's time then shows twice: as its call and as its statements)")
    common.add_argument("--fleet-app", default=None, metavar="MODULE",
                        help="the module the fleet imports instead of the scenario's (it must register the same"
                        " workflows): try an engine change, e.g. a patched constant, without editing flows/")
    sub = p.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for name, module in SCENARIOS.items():
        s = sub.add_parser(name, parents=[common], help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(s)
    return p


def code_revision() -> str:
    """The commit measured, with ``-dirty`` when flows/, supervisor/ or
    webapp/ have uncommitted changes (the fleet runs the working tree)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "flows", "supervisor", "webapp"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    module = SCENARIOS[args.scenario]
    params = {k: v for k, v in vars(args).items() if k != "scenario"}
    params["revision"] = code_revision()
    params["cpus"] = os.cpu_count()
    own = args.own_server or args.nested_statements
    try:
        with (
            server.server_url(own, args.nested_statements) as url,
            Run(args.scenario, url, args.timeout, args.shards, args.fleet_app, own_server=own) as run,
        ):
            runs = []
            for i in range(args.repeat):
                if args.repeat > 1:
                    print(f"-- {args.scenario}: run {i + 1} of {args.repeat}", file=sys.stderr)
                run.restart_clock()
                runs.append(module.measure(run, args))
            result = report.Result(args.scenario, params, runs, module.targets(args), run.notes)
            base = RESULTS_DIR / f"{args.scenario}-{run.stamp}"
    except KeyboardInterrupt:
        print("\nloadtest: interrupted; processes stopped and databases dropped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (RunTimeout, RuntimeError, TimeoutError) as exc:
        print(f"\nloadtest: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(report.table(result))
    report.write_json(result, base.with_suffix(".json"))
    plotted = report.write_plot(result, base.with_suffix(".png"))
    print(f"wrote {base.with_suffix('.json')}" + (f" and {base.with_suffix('.png')}" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
