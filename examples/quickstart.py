"""A three-activity workflow with a signal and a durable sleep, end to end,
with its worker on a thread of the same process.

    ./dev python examples/quickstart.py     (from the checkout; the venv's python)

The database is DATABASE_URL, else the embedded development server.
"""

from __future__ import annotations

import threading

import msgspec

import flows
from flows.embedded import database_url


class Order(msgspec.Struct):
    item: str
    quantity: int


@flows.activity("reserve-stock", retry=flows.RetryPolicy(initial_interval=0.1, max_attempts=3))
def reserve_stock(ctx: flows.ActivityContext, order: Order) -> str:
    return f"reservation-{ctx.idempotency_key}"


@flows.activity("charge-card")
def charge_card(ctx: flows.ActivityContext, amount: int) -> dict:
    return {"charged": amount, "key": ctx.idempotency_key}


@flows.activity("ship")
def ship(ctx: flows.ActivityContext, reservation: str) -> str:
    return f"shipped {reservation}"


@flows.workflow("order", version=1)
def order_workflow(ctx: flows.WorkflowContext, order: Order) -> dict:
    reservation = ctx.activity(reserve_stock, order)
    approval = ctx.wait_for_signal("approved", type=dict)
    payment = ctx.activity(charge_card, order.quantity * 10)
    ctx.sleep(0.5)
    shipped = ctx.activity(ship, reservation)
    return {"approved_by": approval["by"], "payment": payment, "shipped": shipped, "at": ctx.now().isoformat()}


def main() -> None:
    engine = flows.Engine(database_url(), shards=3)
    engine.migrate()
    worker = flows.Worker(engine, workflows=[order_workflow], activities=[reserve_stock, charge_card, ship])
    threading.Thread(target=worker.run, daemon=True).start()

    run = engine.start(order_workflow, Order("book", 2))
    print("started", run.workflow_id, "on", run.workflow_name_sharded)
    engine.send_signal(run.workflow_name, run.workflow_id, "approved", {"by": "alice"})
    print("result", engine.result(run.workflow_name, run.workflow_id, timeout=30))
    worker.stop()
    engine.close()


if __name__ == "__main__":
    main()
