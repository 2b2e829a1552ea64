"""Two writers on one artifact root: exactly one gets a generation's lock (local disk and a real S3 endpoint),
and a flow run that finds a generation locked fails at once, naming the holder, having written nothing."""
import json
import threading
import time

import pytest

from conftest import S3_BUCKET, write_tiny_params
from flows.self_training import self_training
from selftrain import artifacts


def _race(uri: str, writers: int = 8) -> list[str]:
    """`writers` threads create `uri` exclusively at the same moment; returns what each got."""
    start, outcomes = threading.Barrier(writers), []

    def write(i: int) -> None:
        start.wait()
        try:
            artifacts.create_exclusive(uri, f"writer {i}".encode())
            outcomes.append("won")
        except FileExistsError:
            outcomes.append("refused")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_exactly_one_of_racing_writers_gets_the_lock_on_disk_and_on_s3(tmp_path, s3_server):
    for uri in (str(tmp_path / "gen1" / ".lock"), f"s3://{S3_BUCKET}/race/gen1/.lock"):
        outcomes = _race(uri)
        assert sorted(outcomes) == ["refused"] * 7 + ["won"], uri
        assert artifacts.read_bytes(uri).startswith(b"writer ")


def test_a_held_lock_names_its_holder_and_is_released_after_the_block_even_on_error(tmp_path):
    uri = str(tmp_path / "gen2" / ".lock")
    with pytest.raises(RuntimeError, match="boom"):
        with artifacts.exclusive(uri, {"flow_run": "a"}):
            with pytest.raises(artifacts.ArtifactError, match=r"is held by \{'flow_run': 'a'\} \(its last heartbeat 0 s ago\): another run is writing there"):
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
        with pytest.raises(artifacts.ArtifactError, match=r"held by \{'flow_run': 'alive'\} \(its last heartbeat \d s ago\)"):
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
    with pytest.raises(artifacts.ArtifactError, match="one without a heartbeat never: delete that file if its run is gone"):
        with artifacts.exclusive(uri, {"flow_run": "next"}):
            pass


@pytest.mark.slow
def test_a_flow_run_on_a_root_another_run_is_writing_stops_at_once_and_writes_nothing(tmp_path):
    root = tmp_path / "root"
    holder = {"flow_run": "1234", "flow_run_name": "busy-bee", "host": "elsewhere", "pid": 1}
    artifacts.create_exclusive(str(root / "gen0" / ".lock"), json.dumps(holder).encode())
    with pytest.raises(artifacts.ArtifactError, match="busy-bee.*another run is writing there"):
        self_training(str(write_tiny_params(tmp_path / "params.yaml")), str(root), generations=1)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["gen0", "gen0/.lock"]
