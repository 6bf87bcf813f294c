"""start_task_now: a request method's task whose first step runs in the caller's loop pass behaves as
a task started by asyncio: its own current task, its own context, failures and cancellation in the
task, and the caller's task current again afterwards."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from tornadoproxy.web.lean_handler import start_task_now

_SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="")


async def _inside_a_task(body: object) -> tuple[asyncio.Task[None], asyncio.Task[object] | None]:
    """Start `body()` from inside a running task; return the new task and the task current after."""
    loop = asyncio.get_running_loop()
    task = start_task_now(body(), loop)  # type: ignore[operator]
    return task, asyncio.current_task()


def test_the_first_step_runs_at_once_as_the_tasks_own_and_the_rest_when_woken() -> None:
    async def run() -> None:
        woken: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        steps: list[object] = []

        async def body() -> None:
            steps.append(asyncio.current_task())
            _SEEN.set("inside")
            steps.append(await woken)
            steps.append(asyncio.current_task())

        outer = asyncio.current_task()
        _SEEN.set("caller")
        task, after = await _inside_a_task(body)
        assert steps == [task] and after is outer and task is not outer
        assert _SEEN.get() == "caller"  # the task has a context of its own
        assert not task.done()
        woken.set_result("woken")
        await task
        assert steps == [task, "woken", task]

    asyncio.run(run())


def test_a_method_that_ends_at_once_leaves_a_done_task() -> None:
    async def run() -> None:
        async def body() -> str:
            return "done"

        task, _ = await _inside_a_task(body)
        assert task.done() and task.result() == "done"

    asyncio.run(run())


def test_a_failure_in_the_first_step_is_the_tasks_and_the_caller_goes_on() -> None:
    async def run() -> None:
        async def body() -> None:
            raise LookupError("first step")

        outer = asyncio.current_task()
        task, after = await _inside_a_task(body)
        assert after is outer
        assert task.done() and isinstance(task.exception(), LookupError)

    asyncio.run(run())


def test_a_task_cancelled_while_it_waits_ends_cancelled_as_any_task() -> None:
    async def run() -> None:
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        seen: list[int] = []

        async def body() -> None:
            try:
                await never
            except asyncio.CancelledError:
                task = asyncio.current_task()
                assert task is not None
                seen.append(task.cancelling())
                raise

        task, _ = await _inside_a_task(body)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled() and never.cancelled() and seen == [1]

    asyncio.run(run())


def test_in_a_busy_pass_the_first_step_waits_its_turn() -> None:
    async def run() -> None:
        order: list[str] = []

        async def body() -> None:
            order.append("step")

        loop = asyncio.get_running_loop()
        loop.call_soon(order.append, "queued before")
        task = start_task_now(body(), loop)
        assert order == [] and not task.done()
        await task
        assert order == ["queued before", "step"]

    asyncio.run(run())


def test_outside_any_task_nothing_is_left_current() -> None:
    loop = asyncio.new_event_loop()
    try:
        started: list[object] = []

        async def body() -> None:
            started.append(asyncio.current_task(loop))

        task = start_task_now(body(), loop)
        assert task.done() and started == [task] and asyncio.current_task(loop) is None
    finally:
        loop.close()
