"""The lease keeper decides a vnode again when its inputs change or its next deadline comes, not on every tick.

A fake clock and an in-memory stand-in for the apiserver's Lease writes (unit tier: no cluster); the ownership
rules themselves are table-tested in test_ownership.py, and the keeper against the real apiserver in the
integration tests (test_replicas.py, test_takeover.py).
"""

import asyncio
import itertools
from typing import Any

from vkprovider.config import Settings
from vkprovider.controllers.ownership import TICK_S, LeaseKeeper
from vkprovider.core import node as vnode
from vkprovider.core import ownership as own
from vkprovider.kube.client import ApiError

ENV = "lk"


class _Leases:
    """Lease writes: every create/patch gets a new resourceVersion; ``failing`` makes patches answer 500."""

    def __init__(self) -> None:
        self.versions = itertools.count(1)
        self.patches: list[str] = []
        self.failing = False
        # Leases kept here as the apiserver has them (None: deleted): a GET answers them, and a patch whose
        # resourceVersion precondition is not theirs answers 409 (404 once deleted).
        self.current: dict[str, dict[str, Any] | None] = {}
        self.gets: list[str] = []

    async def get(self, path: str) -> dict[str, Any]:
        name = path.rsplit("/", 1)[-1]
        self.gets.append(name)
        lease = self.current.get(name)
        if lease is None:
            raise ApiError(404, "NotFound", f"leases {name} not found")
        return lease

    async def list_all(self, path: str, params: dict[str, str]) -> tuple[list[dict[str, Any]], str, str]:
        """Every vnode Lease kept here (the keeper's sweep)."""
        return [lease for lease in self.current.values() if lease is not None], "1", "LeaseList"

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {"name": body["metadata"]["name"], "resourceVersion": str(next(self.versions))}}

    async def patch(self, path: str, body: dict[str, Any], kind: str = "merge") -> dict[str, Any]:
        if self.failing:
            raise ApiError(500, "InternalError", "etcd is away")
        name = path.rsplit("/", 1)[-1]
        self.patches.append(name)
        if name in self.current:
            lease = self.current[name]
            if lease is None:
                raise ApiError(404, "NotFound", f"leases {name} not found")
            if body["metadata"]["resourceVersion"] != lease["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", "the object has been modified; please apply your changes to the "
                               "latest version and try again")
        return {"metadata": {"resourceVersion": str(next(self.versions))}}


class _NoEvents:
    def normal(self, *args: Any, **kwargs: Any) -> None:
        pass


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _keeper(leases: _Leases, clock: _Clock) -> LeaseKeeper:
    settings = Settings(env=ENV, client_id="me", node_lease_duration_s=40, node_lease_renew_s=10.0,
                        node_lease_renew_deadline_s=30.0)
    return LeaseKeeper(settings, leases, _NoEvents(), clock=clock)  # type: ignore[arg-type]


async def _tick(keeper: LeaseKeeper) -> None:
    await keeper.tick()
    while keeper._writes_in_flight:  # the writes it started, in the background, land
        await asyncio.wait(set(keeper._writes_in_flight))
    # and its membership renewal, its reads of every vnode Lease and of expired members (unless they stall)
    background = [t for t in (keeper.membership._write, keeper._sweep, *keeper.membership._confirming.values())
                  if t is not None and not t.done()]
    if background:
        await asyncio.wait(background, timeout=0.05)


def _name(i: int) -> str:
    return f"vnode.base-{i}.{ENV}"


def _foreign_lease(node: str, holder: str, version: str) -> dict[str, Any]:
    lease = vnode.new_lease(node, holder, 40, "2026-12-02T00:00:00.000000Z", ENV)
    lease["metadata"]["resourceVersion"] = version  # type: ignore[index]
    return lease


async def test_held_vnodes_are_decided_when_their_renewal_is_due_not_on_every_tick():
    leases, clock = _Leases(), _Clock()
    keeper = _keeper(leases, clock)
    for i in range(1000):  # claimed over 10 s, as bases heartbeat for the first time
        assert await keeper.claim(_name(i))
        clock.now += 0.01
    await _tick(keeper)
    decisions_at_start = keeper.decisions
    ticks = 0
    # Until just before the keeper has watched the members for a lease duration (40 s; then it decides every
    # vnode once more, as it may hand over from then on): three to four renewals of each (the first comes at a
    # random point of the first renew interval).
    while clock.now + TICK_S < 1000.0 + 40.0:
        clock.now += TICK_S
        await _tick(keeper)
        ticks += 1
        assert len(keeper.held_nodes()) == 1000  # never fenced: each renewal in time
    renewals = len(leases.patches)
    assert 3100 <= renewals <= 3800, renewals
    assert all(leases.patches.count(_name(i)) >= 2 for i in range(1000))
    # A renewal costs two decisions (due: renew; landed: nothing until the next one); a tick over every vnode
    # would have cost ticks x 1000.
    spent = keeper.decisions - decisions_at_start
    assert spent <= 2 * renewals + 100, (spent, renewals)
    assert spent <= ticks * 1000 / 8


async def test_vnodes_gained_together_renew_spread_over_the_renew_interval():
    """A thousand bases registering within a second must not renew their Leases in the same second ever after:
    under a rollout the apiserver then answered too slowly for all of them and up to 340 vnodes were fenced at
    once (issue 17). Each vnode's first renewal falls at a random point of its first renew interval."""
    leases, clock = _Leases(), _Clock()
    keeper = _keeper(leases, clock)
    claimed_at = clock.now
    for i in range(1000):
        assert await keeper.claim(_name(i))
    per_second = [0] * 11
    while clock.now < claimed_at + 10.0:
        before = len(leases.patches)
        clock.now += TICK_S
        await _tick(keeper)
        per_second[int(clock.now - claimed_at)] += len(leases.patches) - before
    assert sum(per_second) == 1000  # each renewed once within the first interval, none fenced
    assert max(per_second[1:10]) <= 200 and min(per_second[2:10]) >= 50, per_second
    assert len(keeper.held_nodes()) == 1000


async def test_a_vnode_whose_renewals_fail_is_fenced_at_its_renew_deadline():
    leases, clock = _Leases(), _Clock()
    keeper = _keeper(leases, clock)
    lost: list[tuple[str, float]] = []
    keeper.gains.on_lost.append(lambda node: lost.append((node, clock.now)))
    assert await keeper.claim(_name(1))
    claimed_at = clock.now
    leases.failing = True
    while not lost and clock.now < claimed_at + 60:
        clock.now += TICK_S
        await _tick(keeper)
        assert keeper.may_write(_name(1)) == (clock.now - claimed_at < 30.0)
    assert lost and lost[0][0] == _name(1)
    assert claimed_at + 30.0 <= lost[0][1] < claimed_at + 30.0 + TICK_S + 1e-9


async def test_a_foreign_lease_is_taken_when_it_expires_and_a_new_replica_redecides_every_vnode():
    leases, clock = _Leases(), _Clock()
    keeper = _keeper(leases, clock)
    node = _name(7)
    # A vkprovider replica that is not alive (no membership Lease) holds it: it is ours once unchanged for 40 s.
    keeper.on_lease_change(f"{vnode.LEASE_NAMESPACE}/{node}", None, _foreign_lease(node, "gone", "5"))
    seen_at = clock.now
    await _tick(keeper)
    assert not keeper.may_write(node)
    quiet = keeper.decisions
    while not keeper.may_write(node):
        assert clock.now < seen_at + 60
        clock.now += TICK_S
        await _tick(keeper)
    assert seen_at + 40.0 <= clock.now < seen_at + 40.0 + TICK_S + 1e-9
    assert keeper.decisions - quiet <= 3  # expired: acquire; landed: nothing until its renewal

    # A second live replica appears: every vnode is decided again at once (rendezvous may prefer it now).
    before = keeper.decisions
    member = {"metadata": {"name": "vkprovider-lk-other", "resourceVersion": "1"},
              "spec": {"holderIdentity": "other", "leaseDurationSeconds": 40}}
    keeper.on_member_change("default/vkprovider-lk-other", None, member)
    clock.now += TICK_S
    await _tick(keeper)
    assert keeper.decisions - before == 1


def _patches_of(leases: _Leases, node: str) -> list[str]:
    return [name for name in leases.patches if name == node]


async def test_a_conflicted_acquire_is_not_retried_at_tick_rate():
    """A Lease that looks expired only because this replica's watch stopped delivering (its holder renews it):
    the acquire's 409 says the observation is stale, so the Lease is read again before it is decided again,
    instead of a PATCH and a 409 on every tick."""
    leases, clock = _Leases(), _Clock()
    keeper = _keeper(leases, clock)
    node = _name(3)
    keeper.on_lease_change(f"{vnode.LEASE_NAMESPACE}/{node}", None, _foreign_lease(node, "busy", "5"))
    seen_at = clock.now
    leases.current[node] = _foreign_lease(node, "busy", "9")  # renewed meanwhile; the watch did not say

    async def until(t: float) -> None:
        while clock.now < t:
            clock.now += TICK_S
            await _tick(keeper)

    await until(seen_at + 60)
    assert _patches_of(leases, node) == [node]  # one acquire at expiry, then the fresh version: unexpired
    assert leases.gets == [node] and not keeper.may_write(node)
    read_at = seen_at + 40 + TICK_S  # the GET went out on the tick after the 409
    leases.current[node] = _foreign_lease(node, "busy", "12")  # renewed again, still unseen by the watch
    await until(read_at + 60)
    assert _patches_of(leases, node) == [node] * 2 and leases.gets == [node] * 2 and not keeper.may_write(node)
    leases.current[node] = None  # deleted, unseen by the watch: one 404, one read, forgotten
    await until(read_at + 200)
    assert _patches_of(leases, node) == [node] * 3 and leases.gets == [node] * 3 and keeper.lease_of(node) is None


async def test_a_stalled_membership_renewal_does_not_hold_up_the_vnode_renewals():
    """Issue 27, item 5: the tick awaited the membership Lease PATCH inline, so one write stalled on a dead
    connection stopped every vnode's renewal behind it (and past their renew deadline, fenced them all). The
    membership is renewed in the background now, like the vnode Leases: the vnode renewals go on, and nothing is
    fenced while the membership's last renewal is within its renew deadline. Past it (issue 31, membership
    fencing) the other replicas may take this replica's vnodes, so it gives them all up, and takes them back once
    its membership is renewed again."""
    stall = asyncio.Event()

    class StalledMembership(_Leases):
        async def patch(self, path: str, body: dict[str, Any], kind: str = "merge") -> dict[str, Any]:
            if "/kube-node-lease/" not in path:
                await stall.wait()  # the membership renewal gets no answer
            return await super().patch(path, body, kind)

    leases, clock = StalledMembership(), _Clock()
    keeper = _keeper(leases, clock)
    lost: list[str] = []
    keeper.gains.on_lost.append(lost.append)
    await _tick(keeper)  # creates the membership Lease (answered)
    written = clock.now
    for i in range(20):
        assert await keeper.claim(_name(i))
    while clock.now + TICK_S < written + 30.0:  # the renewal due at 10 s never answers; 30 s is the renew deadline
        clock.now += TICK_S
        await asyncio.wait_for(_tick(keeper), 1.0)
    assert lost == [] and len(keeper.held_nodes()) == 20
    assert all(leases.patches.count(_name(i)) >= 2 for i in range(20))
    clock.now += 2 * TICK_S
    await asyncio.wait_for(_tick(keeper), 1.0)
    assert sorted(lost) == sorted(_name(i) for i in range(20)) and keeper.held_nodes() == []
    for i in range(20):  # the watch of this replica's own Leases shows them, still naming it
        lease = _foreign_lease(_name(i), "me", str(100 + i))
        lease["metadata"]["labels"][own.HOLDER_LABEL] = "me"  # type: ignore[index]
        keeper.on_lease_change(f"{vnode.LEASE_NAMESPACE}/{_name(i)}", None, lease)
    await asyncio.wait_for(_tick(keeper), 1.0)
    assert keeper.held_nodes() == []  # not while the membership is late
    stall.set()  # the membership renewal answers at last
    for _ in range(4):
        clock.now += TICK_S
        await asyncio.wait_for(_tick(keeper), 1.0)
    assert len(keeper.held_nodes()) == 20


async def test_a_renewal_that_landed_twice_is_still_ours():
    """A renewal sent again after its answer was lost (a dead connection) may land twice: the second copy answers
    409 because the first changed the Lease. The Lease then carries the renewTime this replica wrote: the renewal
    succeeded, no second write is needed, and nobody is suspected of writing our Lease."""
    stamps: list[str] = []

    class LandedTwice(_Leases):
        def __init__(self) -> None:
            super().__init__()
            self.stored: dict[str, Any] = {}

        async def patch(self, path: str, body: dict[str, Any], kind: str = "merge") -> dict[str, Any]:
            if "/kube-node-lease/" in path and "renewTime" in body.get("spec", {}):
                stamps.append(body["spec"]["renewTime"])
                self.patches.append(path.rsplit("/", 1)[-1])
                # the first copy landed (answer lost), the retried copy meets the new version: 409
                self.stored = {"metadata": {"name": path.rsplit("/", 1)[-1], "resourceVersion": "55",
                                            "labels": {"app.kubernetes.io/managed-by": "vkprovider"}},
                               "spec": {"holderIdentity": "me", "renewTime": body["spec"]["renewTime"],
                                        "leaseDurationSeconds": 40}}
                raise ApiError(409, "Conflict", "the object has been modified")
            return await super().patch(path, body, kind)

        async def get(self, path: str) -> dict[str, Any]:
            return self.stored

    leases, clock = LandedTwice(), _Clock()
    keeper = _keeper(leases, clock)
    lost: list[str] = []
    keeper.gains.on_lost.append(lost.append)
    assert await keeper.claim(_name(1))
    while not stamps:
        clock.now += TICK_S
        await _tick(keeper)
    assert leases.patches.count(_name(1)) == 1  # not written again
    assert keeper._held[_name(1)].resource_version == "55" and lost == []
    assert keeper.may_write(_name(1))


def _labelled_lease(node: str, holder: str, version: str) -> dict[str, Any]:
    lease = _foreign_lease(node, holder, version)
    lease["metadata"]["labels"][own.HOLDER_LABEL] = own.holder_label(holder)  # type: ignore[index]
    return lease


def _member(holder: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": f"vkprovider-{ENV}-{holder}", "resourceVersion": version},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 40}}


async def test_a_dead_members_vnodes_are_taken_from_a_sweep_without_watching_its_renewals():
    """Issue 31: a replica watches only its own vnode Leases. Another replica's Leases, labelled with their
    holder, are read at start and when a member leaves: they are not this replica's while their holder is live,
    however long their renewals go unseen, and are taken by their preferred live member as soon as the holder's
    membership has been seen unchanged for a lease duration and read again unchanged."""
    leases, clock = _Leases(), _Clock()
    keeper = _keeper(leases, clock)
    nodes = [_name(i) for i in range(30)]
    for node in nodes:
        leases.current[node] = _labelled_lease(node, "other", "5")
    member = f"default/vkprovider-{ENV}-other"
    keeper.on_member_change(member, None, _member("other", "3"))
    leases.current[f"vkprovider-{ENV}-other"] = _member("other", "3")
    await keeper.sweep()
    assert all(keeper.foreign(n) for n in nodes) and not any(keeper.lease_exists(n) is False for n in nodes)
    assert all(keeper.lease_of(n) is None for n in nodes)  # a live member's: nothing kept to decide on
    seen_at = clock.now
    while clock.now < seen_at + 39.0:  # its membership is renewed; its vnode Leases' renewals are never seen
        clock.now += TICK_S
        keeper.on_member_change(member, None, _member("other", str(int(clock.now))))
        leases.current[f"vkprovider-{ENV}-other"] = _member("other", str(int(clock.now)))
        await _tick(keeper)
    assert keeper.held_nodes() == [] and _patches_of_any(leases, nodes) == []
    died_at = clock.now  # its membership is renewed no more
    while len(keeper.held_nodes()) < len(nodes):
        assert clock.now < died_at + 45.0, keeper.held_nodes()
        clock.now += TICK_S
        await _tick(keeper)
    # a lease duration after the last renewal seen, then one read of the membership and one sweep: taken at once
    assert died_at + 40.0 <= clock.now <= died_at + 40.0 + 4 * TICK_S
    assert _patches_of_any(leases, nodes) == sorted(nodes)  # one acquire each, no 409


async def _keeper_beside_other() -> tuple[_Leases, _Clock, LeaseKeeper, list[str]]:
    """A keeper whose membership is written, with another live replica ("other"), and the vnodes it loses."""
    leases, clock = _Leases(), _Clock()
    keeper = _keeper(leases, clock)
    lost: list[str] = []
    keeper.gains.on_lost.append(lost.append)
    keeper.on_member_change(f"default/vkprovider-{ENV}-other", None, _member("other", "3"))
    await _tick(keeper)
    return leases, clock, keeper, lost


async def test_a_held_vnode_taken_meanwhile_is_given_up_at_its_next_renewal():
    """A replica does not watch its own Leases (their renewals would be all its watch carries). One taken from it
    (possible only once it fenced itself) answers its next renewal 409: the vnode is given up then, and known as
    the other replica's."""
    leases, clock, keeper, lost = await _keeper_beside_other()
    node = _name(1)
    assert await keeper.claim(node)
    leases.current[node] = _labelled_lease(node, "other", "300")
    while not lost:
        assert clock.now < 1000.0 + 11.0, "renewed within its renew interval"
        clock.now += TICK_S
        await _tick(keeper)
    assert lost == [node] and not keeper.may_write(node)
    clock.now += TICK_S
    await _tick(keeper)  # one read of the Lease: whose it is now
    assert keeper.foreign(node) and leases.gets.count(node) == 2  # the renewal's 409, then that read
    patches = len(_patches_of(leases, node))
    for _ in range(20):
        clock.now += TICK_S
        await _tick(keeper)
    assert len(_patches_of(leases, node)) == patches  # a live member's: not taken back


async def test_a_vnode_handed_over_arrives_through_the_hand_over_watch_and_leaves_it_once_taken():
    leases, clock, keeper, lost = await _keeper_beside_other()
    node = _name(2)
    handed = _labelled_lease(node, "me", "7")
    handed["metadata"]["labels"][own.HANDED_TO_LABEL] = "me"  # type: ignore[index]
    leases.current[node] = handed
    keeper.on_lease_change(f"{vnode.LEASE_NAMESPACE}/{node}", None, handed)
    clock.now += TICK_S
    await _tick(keeper)
    assert keeper.may_write(node)
    del leases.current[node]  # (the stand-in keeps no versions of its own: renewals simply land from here on)
    taken = _labelled_lease(node, "me", "8")  # the acquire removed the hand-over label: out of the watch
    keeper.on_lease_change(f"{vnode.LEASE_NAMESPACE}/{node}", taken, None)
    for _ in range(30):
        clock.now += TICK_S
        await _tick(keeper)
    assert keeper.may_write(node) and lost == [] and leases.gets.count(node) == 0


def _patches_of_any(leases: _Leases, nodes: list[str]) -> list[str]:
    return sorted(name for name in leases.patches if name in nodes)


async def test_the_keeper_loop_ends_when_it_is_cancelled_as_it_is_woken():
    """A stop (the supervisor cancels the root tasks) that came just as the loop was woken (a Lease leaving the
    watch on a hand-over, which a stop makes hundreds of) was swallowed by ``asyncio.wait_for`` on Python 3.11:
    the loop went on ticking and the process never exited (test_replicas' rolling restart, 2 runs in 5)."""
    leases, clock = _Leases(), _Clock()
    for settle in range(6):
        keeper = _keeper(leases, clock)
        task = asyncio.create_task(keeper.run())
        for _ in range(3):
            await asyncio.sleep(0)  # in its wait for a wake or the next tick
        keeper.wake()
        for _ in range(settle):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2.0)
        assert done, f"the loop went on after a cancel {settle} loop turn(s) after a wake"
        task.cancel()


async def test_a_node_of_a_vnode_another_replica_claimed_since_the_last_sweep_has_its_lease_read_once():
    """Issue 31: another replica's new vnode is not in this replica's watch; its Node appearing is the cue to read
    its Lease (one GET), so the vnode is known as that replica's at once, not at the next sweep."""
    leases, clock = _Leases(), _Clock()
    keeper = _keeper(leases, clock)
    keeper.on_member_change(f"default/vkprovider-{ENV}-other", None, _member("other", "3"))
    await _tick(keeper)
    node = _name(5)
    leases.current[node] = _labelled_lease(node, "other", "4")
    assert not keeper.foreign(node) and not keeper.lease_exists(node)
    keeper.on_node_change(node, None, {"metadata": {"name": node}})
    keeper.on_node_change(node, {"metadata": {"name": node}}, {"metadata": {"name": node, "labels": {}}})
    clock.now += TICK_S
    await _tick(keeper)
    assert keeper.foreign(node) and keeper.lease_exists(node) and leases.gets.count(node) == 1
    assert keeper.lease_of(node) is None  # a live member's: nothing kept to decide on


async def test_a_renewal_is_due_on_a_tick_so_it_goes_on_time_with_its_whole_write_budget():
    """The keeper ticks on a grid (``core.grid``) and a renewal is sent a moment after its tick. Due a renew interval
    after that moment, the next renewal missed its tick and went a tick later, every time: sent up to a tick late,
    with up to a tick less than its write budget before the deadline (the rollout bench at 36f029e lost 55 Leases
    in one apiserver stall, fifty of them sent on one tick and unanswered 4.6 s later). It is due a renew interval
    after its tick now, and its hold still counts from the moment it was sent."""
    leases, clock = _Leases(), _Clock()
    keeper = _keeper(leases, clock)
    sent: list[float] = []
    patch = leases.patch

    async def timed_patch(path: str, body: dict[str, Any], kind: str = "merge") -> dict[str, Any]:
        if path.endswith(_name(1)):
            sent.append(clock.now)
        return await patch(path, body, kind)

    leases.patch = timed_patch  # type: ignore[method-assign]
    assert await keeper.claim(_name(1))
    start = clock.now
    for k in itertools.count(1):  # each tick wakes a little after its grid time, by varying amounts
        if len(sent) >= 6:
            break
        clock.now = start + k * TICK_S + (0.0, 0.02, 0.01)[k % 3]
        await _tick(keeper)
        assert keeper.may_write(_name(1))
    gaps = [b - a for a, b in itertools.pairwise(sent[1:])]  # the first renewal falls at a random point
    assert all(10.0 - 0.02 - 1e-9 <= gap <= 10.0 + 0.02 + 1e-9 for gap in gaps), gaps
