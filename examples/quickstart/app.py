"""Quickstart tasks: a standalone task, an async task and a three-step workflow.

Run a worker for them with ``hewer worker start app:worker`` (from this folder).
"""

from __future__ import annotations

import asyncio

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
    ctx.log(f"greeting {input.name}")
    return {"message": f"Hello, {input.name}!"}


@hw.task(name="shout")
async def shout(input: Greeting, ctx: Context) -> dict[str, str]:
    await asyncio.sleep(0.01)
    return {"message": f"HELLO, {input.name.upper()}!"}


orders = hw.workflow(name="order", input_validator=Order)


@orders.task()
def price(input: Order, ctx: Context) -> dict[str, float]:
    return {"total": 2.5 * input.quantity}


@orders.task(parents=[price])
def charge(input: Order, ctx: Context) -> dict[str, str]:
    return {"receipt": f"charged {ctx.task_output(price)['total']:.2f}"}


@orders.task(parents=[price, charge])
def ship(input: Order, ctx: Context) -> dict[str, str]:
    return {"status": f"shipped {input.quantity} x {input.item}"}


worker = hw.worker("quickstart-worker", slots=10, workflows=[greet, shout, orders])
