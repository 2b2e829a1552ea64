"""Two writers on one artifact root: exactly one gets a generation's lock (local disk and a real S3 endpoint),
and a flow run that finds a generation locked fails at once, naming the holder, having written nothing."""

import json
import threading
import time
from collections.abc import Callable

import pytest

from conftest import S3_BUCKET, write_tiny_params
from flows.self_training import self_training
from selftrain import artifacts


def _at_once(attempt: Callable[[int], str], n: int) -> list[str]:
    """attempt(0), ..., attempt(n - 1) in n threads released at the same moment; what each returned, or its error."""
    start, outcomes = threading.Barrier(n), []

    def run(i: int) -> None:
        start.wait()
        try:
            outcomes.append(attempt(i))
        except BaseException as e:  # noqa: BLE001 - reported by the caller's assertion
            outcomes.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def _race(uri: str, writers: int = 8) -> list[str]:
    """`writers` threads create `uri` exclusively at the same moment; returns what each got."""

    def write(i: int) -> str:
        try:
            artifacts.create_exclusive(uri, f"writer {i}".encode())
            return "won"
        except FileExistsError:
            return "refused"

    return _at_once(write, writers)


def test_exactly_one_of_racing_writers_gets_the_lock_on_disk_and_on_s3(tmp_path, s3_server):
    for uri in (str(tmp_path / "gen1" / ".lock"), f"s3://{S3_BUCKET}/race/gen1/.lock"):
        outcomes = _race(uri)
        assert sorted(outcomes) == ["refused"] * 7 + ["won"], uri
        assert artifacts.read_bytes(uri).startswith(b"writer ")


def test_a_held_lock_names_its_holder_and_is_released_after_the_block_even_on_error(tmp_path):
    uri = str(tmp_path / "gen2" / ".lock")
    with pytest.raises(RuntimeError, match="boom"):
        with artifacts.exclusive(uri, {"flow_run": "a"}):
            with pytest.raises(
                artifacts.ArtifactError,
                match=r"is held by \{'flow_run': 'a'\} \(its last heartbeat 0 s ago\): another run is writing there",
            ):
                with artifacts.exclusive(uri, {"flow_run": "b"}):
                    pass
            raise RuntimeError("boom")
    assert not artifacts.exists(uri)
    with artifacts.exclusive(uri, {"flow_run": "c"}):  # free again
        assert json.loads(artifacts.read_bytes(uri))["flow_run"] == "c"


def test_a_lock_is_renewed_while_held_and_taken_over_once_its_holder_stops_renewing(tmp_path, caplog):
    uri = str(tmp_path / "gen3" / ".lock")
    with artifacts.exclusive(uri, {"flow_run": "alive"}, stale_after_s=2.0):
        first = json.loads(artifacts.read_bytes(uri))["heartbeat"]
        time.sleep(2.5)  # past stale_after_s, yet renewed meanwhile: still held
        assert json.loads(artifacts.read_bytes(uri))["heartbeat"] > first
        with pytest.raises(
            artifacts.ArtifactError, match=r"held by \{'flow_run': 'alive'\} \(its last heartbeat \d s ago\)"
        ):
            with artifacts.exclusive(uri, {"flow_run": "other"}, stale_after_s=2.0):
                pass
    # a run killed while holding it: its heartbeat stops; once older than stale_after_s the lock is taken over
    dead = {"flow_run": "killed", "token": "t", "heartbeat": time.time() - 30, "stale_after_s": 20}
    artifacts.write_json(uri, dead)
    with caplog.at_level("WARNING", logger="selftrain"), artifacts.exclusive(uri, {"flow_run": "next"}):
        assert json.loads(artifacts.read_bytes(uri))["flow_run"] == "next"
    assert "taking over the lock of {'flow_run': 'killed'}, whose last heartbeat was 30 s ago" in caplog.text
    assert not artifacts.exists(uri)
    # one without a heartbeat (unknown liveness) never is
    artifacts.write_json(uri, {"flow_run": "old-style"})
    with pytest.raises(
        artifacts.ArtifactError, match="one without a heartbeat never: delete that file if its run is gone"
    ):
        with artifacts.exclusive(uri, {"flow_run": "next"}):
            pass


@pytest.mark.slow
def test_a_flow_run_on_a_root_another_run_is_writing_stops_at_once_and_writes_nothing(tmp_path):
    """Another run (live: a fresh heartbeat) is in its generation 1 on this root; this one, with other params, would
    rewrite the data and generation 0 under it (each generation once had a lock of its own, gen0's free)."""
    root = tmp_path / "root"
    holder = {
        "flow_run": "1234",
        "flow_run_name": "busy-bee",
        "host": "elsewhere",
        "pid": 1,
        "token": "t",
        "heartbeat": time.time(),
    }
    artifacts.create_exclusive(str(root / ".lock"), json.dumps(holder).encode())
    (root / "gen1").mkdir()
    with pytest.raises(artifacts.ArtifactError, match="busy-bee.*another run is writing there"):
        self_training(
            str(write_tiny_params(tmp_path / "params.yaml")), str(root), generations=1, overrides={"teacher.epochs": 1}
        )
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [".lock", "gen1"]


def _take_over_race(uri: str, takers: int = 8) -> list[str]:
    """`takers` threads find the same stale lock at `uri` and try to take it over at once; each winner holds it until
    every thread has tried. Returns what each got."""
    dead = {"flow_run": "killed", "token": "t", "heartbeat": time.time() - 60, "stale_after_s": 20}
    artifacts.write_json(uri, dead)
    tried = threading.Barrier(takers, timeout=60)  # a thread that fails otherwise breaks it rather than hang the rest

    def take(i: int) -> str:
        try:
            with artifacts.exclusive(uri, {"flow_run": f"taker {i}"}, stale_after_s=20):
                tried.wait()
                return "won"
        except artifacts.ArtifactError:
            tried.wait()
            return "refused"

    return _at_once(take, takers)


def test_of_racing_takers_of_a_stale_lock_exactly_one_wins_on_disk_and_on_s3(tmp_path, s3_server):
    for uri in (str(tmp_path / "gen4" / ".lock"), f"s3://{S3_BUCKET}/takeover/gen4/.lock"):
        for _ in range(3):
            assert sorted(_take_over_race(uri)) == ["refused"] * 7 + ["won"], uri
            assert not artifacts.exists(uri)  # released by the winner


def test_a_conditional_write_meeting_one_in_flight_is_retried_and_then_sees_the_winner(s3_server):
    """S3 answers a conditional write 409 ConditionalRequestConflict while another write of the key is in flight,
    and asks for a retry (tests/moto_s3.py does the same): create_exclusive retries, then finds the key taken."""
    import http.client
    from urllib.parse import urlsplit

    uri, key = f"s3://{S3_BUCKET}/inflight/.lock", f"/{S3_BUCKET}/inflight/.lock"
    first = b'{"flow_run": "first"}' + b" " * 100_000
    endpoint = urlsplit(s3_server["AWS_ENDPOINT_URL"])
    slow = http.client.HTTPConnection(endpoint.hostname, endpoint.port, timeout=30)
    slow.putrequest("PUT", key)
    slow.putheader("Content-Length", str(len(first)))
    slow.endheaders()
    slow.send(first[:10])  # the server is now inside this write, waiting for the rest of its body
    time.sleep(0.5)
    outcome: list[BaseException | None] = []
    second = threading.Thread(
        target=lambda: outcome.append(_error_of(lambda: artifacts.create_exclusive(uri, b"second")))
    )
    second.start()
    time.sleep(1.5)  # the second write meets the first in flight: 409, retried
    assert second.is_alive()
    slow.send(first[10:])
    assert slow.getresponse().status == 200
    second.join(30)
    assert isinstance(outcome[0], FileExistsError), outcome
    assert artifacts.read_bytes(uri) == first


def _error_of(call: Callable[[], object]) -> BaseException | None:
    try:
        call()
    except BaseException as e:  # noqa: BLE001 - the test asserts which
        return e
    return None


def test_a_run_whose_lock_was_taken_over_stops_writing_and_leaves_the_new_holders_lock(tmp_path, caplog):
    uri, out = str(tmp_path / "gen5" / ".lock"), str(tmp_path / "gen5" / "student")
    with artifacts.atomic_dir(out) as staging:
        artifacts.write_json(f"{staging}/a.json", {"by": "before"})
    with pytest.raises(artifacts.LockLost, match="no longer holds .* another run took it over"):
        with artifacts.exclusive(uri, {"flow_run": "paused"}, stale_after_s=0.4):
            # the run is paused past stale_after_s and another takes the lock over
            artifacts.write_json(
                uri, {"flow_run": "newer", "token": "n", "heartbeat": time.time(), "stale_after_s": 600}
            )
            time.sleep(0.3)  # the heartbeat notices
            with artifacts.atomic_dir(out) as staging:
                artifacts.write_json(f"{staging}/a.json", {"by": "the paused run"})
    assert artifacts.read_json(f"{out}/a.json") == {
        "by": "before"
    }  # nothing put in place by the run that lost the lock
    assert json.loads(artifacts.read_bytes(uri))["flow_run"] == "newer"  # and the new holder's lock is not removed
    assert "is no longer held by this run" in caplog.text


@pytest.mark.parametrize("store", ["disk", "s3"])
def test_a_run_that_lost_its_lock_writes_no_single_file_even_before_its_heartbeat_notices(store, tmp_path, s3_server):
    """A run paused past stale_after_s resumes and writes at once: its heartbeat (every stale_after_s / 4) has not
    looked yet, so each write must read the lock itself. Nothing it writes lands: metrics, promotion record, lineage,
    resume checkpoint, a copy, a removal; the new holder's files stay as they were."""
    root = str(tmp_path / "gen1") if store == "disk" else f"s3://{S3_BUCKET}/lost-{tmp_path.name}/gen1"
    lock = artifacts.join(root, ".lock")
    artifacts.write_json(artifacts.join(root, "metrics.json"), {"by": "the new holder"})
    newer = {"flow_run": "newer", "token": "n", "heartbeat": time.time(), "stale_after_s": 600}
    with pytest.raises(artifacts.LockLost):
        with artifacts.exclusive(lock, {"flow_run": "paused"}, stale_after_s=600):
            artifacts.write_json(
                artifacts.join(root, "promoted.json"), {"by": "the holder, before"}
            )  # still its own: lands
            artifacts.replace_if(lock, artifacts.read_bytes(lock), json.dumps(newer).encode())  # the takeover
            writes = {
                "metrics.json": lambda: artifacts.write_json(
                    artifacts.join(root, "metrics.json"), {"by": "the paused run"}
                ),
                "promoted.json": lambda: artifacts.write_json(
                    artifacts.join(root, "promoted.json"), {"by": "the paused run"}
                ),
                "lineage.json": lambda: artifacts.write_json(
                    artifacts.join(root, "lineage.json"), {"by": "the paused run"}
                ),
                "student.resume": lambda: artifacts.write_bytes(artifacts.join(root, "student.resume"), b"checkpoint"),
                "copy": lambda: artifacts.copy(
                    artifacts.join(root, "metrics.json"), artifacts.join(root, "copied.json")
                ),
                "remove": lambda: artifacts.remove(artifacts.join(root, "metrics.json")),
            }
            for name, write in writes.items():
                assert isinstance(_error_of(write), artifacts.LockLost), name
    assert artifacts.read_json(artifacts.join(root, "metrics.json")) == {"by": "the new holder"}
    assert artifacts.read_json(artifacts.join(root, "promoted.json")) == {"by": "the holder, before"}
    assert not any(artifacts.exists(artifacts.join(root, n)) for n in ("lineage.json", "student.resume", "copied.json"))
    assert json.loads(artifacts.read_bytes(lock))["flow_run"] == "newer"


def test_an_artifact_whose_files_are_not_its_manifests_is_refused_on_s3_and_on_disk(tmp_path, s3_server):
    import s3fs

    for uri in (f"s3://{S3_BUCKET}/mixed/data", str(tmp_path / "mixed" / "data")):
        with artifacts.atomic_dir(uri) as staging:
            for name in ("a", "b"):
                artifacts.write_json(f"{staging}/{name}.json", {"writer": 1, "part": name})
        before = artifacts.content_hash(uri)
        # a second writer's copy lands over one file after the first writer's manifest: same size, other content
        artifacts.write_json(f"{uri}/b.json", {"writer": 2, "part": "b"})
        if uri.startswith("s3://"):
            with pytest.raises(artifacts.ArtifactError, match=r"does not match its MANIFEST.json \(b.json"):
                artifacts.require_complete(uri)
        artifacts.write_json(f"{uri}/b.json", {"writer": 22, "part": "b"})  # another size: refused on disk too
        with pytest.raises(artifacts.ArtifactError, match=r"does not match its MANIFEST.json \(b.json"):
            artifacts.require_complete(uri)
        artifacts.write_json(f"{uri}/c.json", {})  # and a file the manifest does not list
        with pytest.raises(artifacts.ArtifactError, match=r"\(b.json, c.json"):
            artifacts.content_hash(uri)
        with artifacts.atomic_dir(uri) as staging:  # rewritten whole: complete again, the extra file gone
            for name in ("a", "b"):
                artifacts.write_json(f"{staging}/{name}.json", {"writer": 1, "part": name})
        assert artifacts.content_hash(uri) == before
    s3fs.S3FileSystem.clear_instance_cache()


def test_two_writers_of_one_s3_artifact_at_once_leave_one_writers_files_or_a_refused_artifact(s3_server):
    uri = f"s3://{S3_BUCKET}/two-writers/data"
    for _ in range(3):
        ready = threading.Barrier(2)

        def write(writer: int) -> None:
            with artifacts.atomic_dir(uri) as staging:
                for name in "abcdef":
                    artifacts.write_json(f"{staging}/{name}.json", {"writer": writer, "part": name})
                ready.wait()  # both commit at the same moment

        threads = [threading.Thread(target=write, args=(w,)) for w in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            artifacts.require_complete(uri)
        except artifacts.ArtifactError as e:
            assert "does not match its MANIFEST.json" in str(e) or "incomplete" in str(e)
            continue
        writers = {artifacts.read_json(f"{uri}/{name}.json")["writer"] for name in "abcdef"}
        assert len(writers) == 1, "a complete artifact must hold one writer's files"
