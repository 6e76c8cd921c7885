"""The worker that compose.yaml runs: a task and a two-step workflow.

compose.yaml mounts this folder at /app and runs ``hewer worker start app:worker`` there;
the worker finds the engines through HEWER_HOST_PORT and HEWER_TOKEN. Try it with::

    docker compose exec engine-a hewer run greet --input '{"name": "Ada"}'
    docker compose exec engine-b hewer run receipt --input '{"item": "saw", "quantity": 2}'
"""

from __future__ import annotations

import socket

from pydantic import BaseModel

from hewer import Context, Hewer

hw = Hewer()


class Greeting(BaseModel):
    name: str


class Order(BaseModel):
    item: str
    quantity: int


@hw.task(name="greet")
def greet(input: Greeting, ctx: Context) -> dict[str, str]:
    # In a container the host name is the container's id: the answer says who ran it.
    return {"message": f"Hello, {input.name}!", "worker_host": socket.gethostname()}


receipt = hw.workflow(name="receipt", input_validator=Order)


@receipt.task()
def price(input: Order, ctx: Context) -> dict[str, float]:
    return {"total": 2.5 * input.quantity}


@receipt.task(parents=[price])
def issue(input: Order, ctx: Context) -> dict[str, str]:
    total = ctx.task_output(price)["total"]
    return {"receipt": f"{input.quantity} x {input.item}: {total:.2f}"}


worker = hw.worker("compose-worker", slots=4, workflows=[greet, receipt])
