"""Lease renewal: a task whose lease this node no longer holds is stopped, but not a task its
runner has just ended (it is no longer running in the store while the runner returns)."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

import pytest

from sluice.store import Firing, Store, TaskPlan
from sluice.worker.heartbeat import Heartbeat
from sluice.worker.worker import Running


@pytest.fixture
def store(sqlite_url):
    s = Store.open(sqlite_url)
    yield s
    s.close()


def _worker(store: Store) -> SimpleNamespace:
    return SimpleNamespace(store=store, _lock=threading.Lock(), running={},
                           node=SimpleNamespace(id="n"), settings=SimpleNamespace(lease_ttl=30))


def _running(w: SimpleNamespace, store: Store) -> Running:
    store.job_register("j", "job", {"v": 1}, store.clock() - 1, None)
    store.run_fire("j", store.job_get("j")["next_fire_at"], None, [Firing(scheduled_at=1.0)],
                   "skip", lambda f: [TaskPlan(kind="job")])
    task = store.task_claim("n", 1, [], None, 30)[0]
    r = Running(task=task, ctx=SimpleNamespace(_cancel=threading.Event()), deadline=None)
    w.running[(task.id, task.token)] = r
    return r


def test_a_task_ended_by_its_runner_is_not_reported_lost(store, caplog):
    w = _worker(store)
    r = _running(w, store)
    beat = Heartbeat(w)  # type: ignore[arg-type]
    beat._renew()
    assert not r.lost
    store.task_complete(r.task.id, r.task.token)  # the runner ended it, and is returning
    with caplog.at_level(logging.WARNING, "sluice.worker"):
        beat._renew()
        assert not r.lost and not r.ctx._cancel.is_set()
        del w.running[(r.task.id, r.task.token)]  # it returned
        beat._renew()
    assert "lost" not in caplog.text


def test_a_lease_taken_over_stops_the_task_at_the_second_missed_renewal(store, caplog):
    w = _worker(store)
    r = _running(w, store)
    store.task_release(r.task.id, r.task.token)
    other = store.task_claim("m", 1, [], None, 30)[0]  # another node holds it now
    assert other.token > r.task.token
    beat = Heartbeat(w)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, "sluice.worker"):
        beat._renew()
        assert not r.lost
        beat._renew()
    assert r.lost and r.ctx._cancel.is_set()
    assert f"lease on task {r.task.id} of 'j' lost" in caplog.text
