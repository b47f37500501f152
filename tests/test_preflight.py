"""`rackwatch check-config`: a real process trying MAAS and Testflinger of a served simulated lab."""

from __future__ import annotations

from pathlib import Path

import pytest

from rackwatch.preflight import Trial, try_state_file
from rackwatch.simlab import Behaviour, Fault, FaultKind, SimMachine, SimRack
from tests.harness import Harness, LabFactory, rackwatch, write_config

LOGIN = ("rackwatch-ci", "a-long-client-secret-0001")


@pytest.fixture
async def harness(served: LabFactory) -> Harness:
    """A lab of two racks: r1 with a passing, a failing and an offline machine; r2 with one."""
    b = Behaviour
    r1 = SimRack(
        "r1",
        [SimMachine("r1-m1", b.PASS), SimMachine("r1-m2", b.FAIL), SimMachine("r1-m3", b.OFFLINE)],
    )
    return await served([r1, SimRack("r2", [SimMachine("r2-m1", b.PASS)])])


async def test_check_config_tries_maas_and_testflinger(served: LabFactory, tmp_path: Path) -> None:
    """Against a served lab with login, every check passes: one line each, exit 0."""
    racks = [
        SimRack("r1", [SimMachine("r1-m1"), SimMachine("r1-m2")]),
        SimRack("r2", [SimMachine("r2-m1")]),
    ]
    harness = await served(racks, testflinger_login=LOGIN)
    lab = harness.lab
    login = f'client_id = "{LOGIN[0]}"\nsecret = "{LOGIN[1]}"'
    config = write_config(
        tmp_path / "rw.toml", lab, harness.urls, tmp_path / "s.db", testflinger=login
    )
    done = await rackwatch("check-config", "--config", str(config))
    assert done.code == 0, done.err
    assert done.out.splitlines() == [
        f"config: {config}: valid (2 racks, state file {tmp_path / 's.db'})",
        f"state file: {tmp_path / 's.db'}: does not exist yet; this user can create it in"
        f" {tmp_path}",
        "maas: r1: 2 machines",
        "maas: r2: 1 machine",
        f"testflinger: logged in as {LOGIN[0]}",
        "testflinger: 3 agents",
    ]
    assert LOGIN[1] not in done.out + done.err
    assert lab.logins == 1
    assert not (tmp_path / "s.db").exists()


async def test_check_config_with_a_wrong_maas_key_exits_69_without_the_secret(
    harness: Harness, tmp_path: Path
) -> None:
    """MAAS refusing the key is reported per rack, exit 69, and neither secret is printed."""
    real_secret = harness.lab.maas_api_key.rsplit(":", 1)[-1]
    wrong_secret = "WrongSecretWrongSecret0123456789"
    key = harness.lab.maas_api_key.rsplit(":", 1)[0] + ":" + wrong_secret
    config = write_config(
        tmp_path / "bad.toml",
        harness.lab,
        harness.urls,
        harness.state_file,
        racks=["r1"],
        api_key=key,
    )
    done = await rackwatch("check-config", "--config", str(config))
    assert done.code == 69
    assert "maas: r1: maas GET /MAAS/api/2.0/machines/ refused the credentials (401)" in done.out
    assert "testflinger: 4 agents" in done.out
    assert done.err.strip() == "rackwatch: check-config: failed: maas r1"
    for secret in (real_secret, wrong_secret):
        assert secret not in done.out + done.err


async def test_check_config_names_an_unknown_rack(harness: Harness, tmp_path: Path) -> None:
    """A configured rack that MAAS has no tag for fails check-config, naming the rack."""
    config = write_config(
        tmp_path / "rw.toml", harness.lab, harness.urls, harness.state_file, racks=["r1", "r9"]
    )
    done = await rackwatch("check-config", "--config", str(config))
    assert done.code == 69
    assert "maas: r1: 3 machines" in done.out
    assert "maas: r9: unknown rack 'r9'" in done.out
    assert done.err.strip() == "rackwatch: check-config: failed: maas r9"


# The state file: whether this user could write it, with nothing created.


def test_a_state_file_that_can_be_written_says_so(tmp_path: Path) -> None:
    """An existing file in a writable folder is writable; one not there yet can be created, in
    its folder or with the folders it needs; the trial creates none of them."""
    existing = tmp_path / "state.db"
    existing.write_bytes(b"")
    assert try_state_file(existing) == Trial([f"state file: {existing}: writable"])
    new = tmp_path / "new.db"
    assert try_state_file(new) == Trial(
        [f"state file: {new}: does not exist yet; this user can create it in {tmp_path}"]
    )
    deep = tmp_path / "var" / "lib" / "rackwatch" / "state.db"
    assert try_state_file(deep) == Trial(
        [
            f"state file: {deep}: does not exist yet; this user can create {deep.parent} and it"
            f" in {tmp_path}"
        ]
    )
    assert sorted(tmp_path.iterdir()) == [existing]


def test_a_state_file_that_cannot_be_a_file_fails(tmp_path: Path) -> None:
    """A folder named as the state file, or a file where its folder should be, fails the trial."""
    folder = tmp_path / "state"
    folder.mkdir()
    assert try_state_file(folder) == Trial(
        [f"state file: {folder}: is a folder; name a file in it, e.g. {folder / 'state.db'}"],
        "state file",
    )
    taken = tmp_path / "taken"
    taken.write_text("a file where the folder should be")
    assert try_state_file(taken / "sub" / "state.db") == Trial(
        [
            f"state file: {taken / 'sub' / 'state.db'}: {taken} is a file where a folder should"
            " be; name another state_file"
        ],
        "state file",
    )


async def test_check_config_says_which_agent_records_lack_fields(
    harness: Harness, tmp_path: Path
) -> None:
    """Agent records cut to Testflinger's declared schema: a warning per rule they turn off."""
    harness.lab.inject(Fault(FaultKind.BARE_AGENTS, "testflinger", "/v1/agents/data", times=None))
    config = write_config(tmp_path / "rw.toml", harness.lab, harness.urls, harness.state_file)
    done = await rackwatch("check-config", "--config", str(config))
    assert done.code == 0, done.err
    assert done.out.splitlines()[-3:] == [
        "testflinger: 4 agents",
        "warning: testflinger: stale detection is off for 4 agents: Testflinger's records lack"
        " updated_at",
        "warning: testflinger: quarantine detection is off for 4 agents: Testflinger's records"
        " lack provision_streak_*",
    ]


async def test_check_config_warns_of_no_field_a_full_record_has(
    harness: Harness, tmp_path: Path
) -> None:
    """Records as Testflinger serves them today, of agents that never provisioned: no warning."""
    config = write_config(tmp_path / "rw.toml", harness.lab, harness.urls, harness.state_file)
    done = await rackwatch("check-config", "--config", str(config))
    assert done.code == 0, done.err
    assert "warning" not in done.out
    assert done.out.splitlines()[-1] == "testflinger: 4 agents"
