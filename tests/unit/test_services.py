"""agent.util.services: the lifetime of a worker's background work."""

from __future__ import annotations

import threading

from agent.util.services import Heartbeat, Services


class Recorder:
    def __init__(self, name: str, log: list[str], fail_stop: bool = False) -> None:
        self.name, self.log, self.fail_stop = name, log, fail_stop

    def start(self) -> None:
        self.log.append(f"start {self.name}")

    def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        if self.fail_stop:
            raise RuntimeError("boom")

    def close_inherited(self) -> None:
        self.log.append(f"fork {self.name}")


def test_services_start_in_order_and_stop_in_reverse_even_when_one_stop_fails() -> None:
    log: list[str] = []
    services = Services([Recorder("state", log), Recorder("claim", log, fail_stop=True), Recorder("watch", log)])
    services.start()
    services.stop()
    services.close_inherited()
    assert log == [
        "start state",
        "start claim",
        "start watch",
        "stop watch",
        "stop claim",
        "stop state",  # reached although the claim's stop raised
        "fork state",
        "fork claim",
        "fork watch",
    ]


def test_a_heartbeat_ticks_survives_a_failing_tick_and_runs_its_stop_after_the_last_tick() -> None:
    ticks: list[int] = []
    enough = threading.Event()
    order: list[str] = []

    def tick() -> None:
        ticks.append(len(ticks))
        if len(ticks) == 1:
            raise RuntimeError("first tick fails")
        if len(ticks) >= 3:
            enough.set()

    beat = Heartbeat("t", 0.01, tick, on_stop=lambda: order.append(f"stopped after {len(ticks)}"))
    beat.start()
    beat.start()  # once
    assert enough.wait(10), "the heartbeat stopped after a failing tick"
    beat.stop()
    count = len(ticks)
    assert order == [f"stopped after {count}"]
    assert not any(t.name == "t" for t in threading.enumerate()), "the thread outlived stop()"


def test_a_heartbeat_in_a_forked_child_runs_its_fork_hook_and_can_start_afresh() -> None:
    forked: list[str] = []
    ticked = threading.Event()
    beat = Heartbeat("t2", 0.01, ticked.set, on_fork=lambda: forked.append("closed"))
    beat.close_inherited()  # what a pool child calls: no thread of the parent's is there to stop
    assert forked == ["closed"]
    beat.start()
    assert ticked.wait(10)
    beat.stop()
