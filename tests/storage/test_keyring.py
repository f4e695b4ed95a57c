"""Master keyring versions: a rotation is pending before it is active; retiring refuses a
version in use; the environment form carries the same state."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from storage import keys as keys_module
from storage.keys import KeyringError, MasterKeyring, TenantKeyStore, replace_secret_file
from tests.opsdata import keyring


def test_a_rotation_is_pending_until_its_time() -> None:
    ring = keyring(1)
    rotated = ring.rotated(grace_s=0.05)
    assert set(rotated.keys) == {1, 2}
    assert rotated.active == 1  # loaded everywhere first, used later
    time.sleep(0.06)
    assert rotated.active == 2
    assert rotated.settled().pending is None


def test_rotating_twice_before_activation_is_refused() -> None:
    rotated = keyring(1).rotated(grace_s=60)
    with pytest.raises(KeyringError, match="already pending"):
        rotated.rotated(grace_s=60)


def test_retiring_refuses_the_versions_that_write() -> None:
    ring = keyring(1, 2, 3)
    with pytest.raises(KeyringError, match="in use"):
        ring.without(3)
    pending = ring.rotated(grace_s=60)
    with pytest.raises(KeyringError, match="in use"):
        pending.without(4)
    assert set(ring.without(1).keys) == {2, 3}


def test_file_and_environment_forms_round_trip(tmp_path: Path) -> None:
    ring = keyring(1, 2).rotated(grace_s=3600)
    path = tmp_path / "secrets" / "master-keys.json"
    replace_secret_file(path, ring.to_json())
    assert path.stat().st_mode & 0o777 == 0o600
    again = MasterKeyring.from_json(path.read_bytes())
    from_env = MasterKeyring.from_env(ring.to_env())
    for loaded in (again, from_env):
        assert loaded.keys == ring.keys
        assert loaded.active == 2
        assert loaded.pending is not None
        assert loaded.pending.version == 3


def test_the_highest_environment_version_is_active_unless_pending() -> None:
    ring = MasterKeyring.from_env(keyring(1, 2).to_env())
    assert ring.active == 2
    with pytest.raises(ValueError, match="newest"):
        MasterKeyring.from_env("1:" + "A" * 43 + "=@1,2:" + "B" * 43 + "=")


def test_a_tenant_key_file_removed_by_another_process_is_seen_at_once(tmp_path: Path) -> None:
    store = TenantKeyStore(tmp_path / "keys")
    store.create("tenant-a")
    assert store.has("tenant-a")  # its path is now remembered
    assert not store.has("tenant-b")
    # Another process (``baychat tenant delete``) shreds the key behind this object's back.
    (tmp_path / "keys" / "tenant-a.key").unlink()
    assert not store.has("tenant-a")
    store.create("tenant-b")
    assert store.has("tenant-b")
    with pytest.raises(ValueError, match="malformed"):
        store.has("../escape")


def test_remembered_key_paths_stay_bounded(tmp_path: Path) -> None:
    store = TenantKeyStore(tmp_path / "keys")
    store.create("kept")
    for i in range(keys_module._CHECKED_PATHS + 5):
        assert not store.has(f"t{i}")
    assert len(store._checked) <= keys_module._CHECKED_PATHS
    assert store.has("kept")
