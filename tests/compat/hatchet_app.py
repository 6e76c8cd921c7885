"""A worker and a client written with the unmodified hatchet-sdk, run against our engine.

Run as a script: ``python hatchet_app.py worker`` or ``python hatchet_app.py client``.
Never imported by the test process (hatchet-sdk's protobuf names would clash with ours).
"""

from __future__ import annotations

import asyncio
import json
import sys

from hatchet_sdk import Context, Hatchet
from pydantic import BaseModel

hatchet = Hatchet()


class In(BaseModel):
    x: int


@hatchet.task(name="compat-double", input_validator=In)
def double(input: In, ctx: Context) -> dict[str, int]:
    return {"y": input.x * 2}


@hatchet.task(name="compat-async-add", input_validator=In)
async def async_add(input: In, ctx: Context) -> dict[str, int]:
    await asyncio.sleep(0)
    return {"y": input.x + 100}


@hatchet.task(name="compat-fail", input_validator=In)
def fail(input: In, ctx: Context) -> dict[str, int]:
    raise ValueError(f"bad x {input.x}")


dag = hatchet.workflow(name="compat-dag", input_validator=In)


@dag.task()
def first(input: In, ctx: Context) -> dict[str, int]:
    return {"a": input.x + 1}


@dag.task(parents=[first])
def second(input: In, ctx: Context) -> dict[str, int]:
    return {"b": ctx.task_output(first)["a"] * 10}


def worker() -> None:
    hatchet.worker("compat-worker", slots=4, workflows=[double, async_add, fail, dag]).start()


async def client_async() -> dict[str, object]:
    out: dict[str, object] = {}
    out["aio_double"] = await double.aio_run(In(x=5))
    out["aio_add"] = await async_add.aio_run(In(x=1))
    out["aio_dag"] = await dag.aio_run(In(x=2))
    try:
        await fail.aio_run(In(x=3))
        out["aio_fail"] = "no error"
    except Exception as exc:  # the SDK raises its own exception types
        out["aio_fail"] = str(exc)
    return out


def client() -> None:
    out: dict[str, object] = {}
    out["double"] = double.run(In(x=21))
    out["dag"] = dag.run(In(x=1))
    try:
        fail.run(In(x=7))
        out["fail"] = "no error"
    except Exception as exc:
        out["fail"] = str(exc)
    refs = [double.run_no_wait(In(x=i)) for i in range(3)]
    out["no_wait"] = [ref.result() for ref in refs]
    out.update(asyncio.run(client_async()))
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    {"worker": worker, "client": client}[sys.argv[1]]()
