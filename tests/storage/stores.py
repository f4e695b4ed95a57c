"""Opening stores the way the server does: the owner migrates, the application opens."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

from storage.engine import database_user
from storage.keys import MasterKeyring, TenantKeyStore
from storage.store import Store


def store_for(url: str, keys_dir: Path) -> Store:
    keyring = MasterKeyring({1: secrets.token_bytes(32)}, 1)
    return Store.from_url(url, keyring, TenantKeyStore(keys_dir))


@contextlib.asynccontextmanager
async def opened_store(owner_url: str, app_url: str, keys_dir: Path) -> AsyncIterator[Store]:
    """Migrate as the owner (a no-op when already done), then open as the application."""
    keyring = MasterKeyring({1: secrets.token_bytes(32)}, 1)
    keystore = TenantKeyStore(keys_dir)
    owner = Store.from_url(owner_url, keyring, keystore)
    await owner.open(migrate_schema=True, app_role=database_user(app_url))
    await owner.close()
    store = Store.from_url(app_url, keyring, keystore)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
