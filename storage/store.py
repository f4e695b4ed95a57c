"""The Store: per-domain repositories over one engine. Code above this seam never asks
which engine it has."""

from __future__ import annotations

from storage.agents import Agents
from storage.audit import AuditLog
from storage.channels import Channels
from storage.crypto import MessageCipher
from storage.engine import Engine, open_engine
from storage.keys import MasterKeyring, TenantKeyStore
from storage.messages import Messages
from storage.migrations import check_version, migrate
from storage.sessions import Sessions
from storage.tenants import Tenants
from storage.users import Users


class Store:
    def __init__(self, engine: Engine, cipher: MessageCipher) -> None:
        self.engine = engine
        self.cipher = cipher
        self.audit = AuditLog(engine)
        self.tenants = Tenants(engine, cipher.keystore)
        self.users = Users(engine, self.audit)
        self.channels = Channels(engine, self.audit)
        self.messages = Messages(engine, cipher)
        self.sessions = Sessions(engine, self.audit)
        self.agents = Agents(engine, self.audit)

    @classmethod
    def from_url(cls, url: str, keyring: MasterKeyring, keystore: TenantKeyStore) -> Store:
        return cls(open_engine(url), MessageCipher(keyring, keystore))

    async def open(self, *, migrate_schema: bool = False, app_role: str | None = None) -> None:
        """Open, then either migrate (the owner's connection; ``app_role`` receives the
        grants) or refuse a role that could bypass tenant isolation (everyone else's).
        Either way the schema version must match this code."""
        await self.engine.open()
        try:
            if migrate_schema:
                await migrate(self.engine, app_role=app_role)
            else:
                await self.engine.check_role()
            await check_version(self.engine)
        except BaseException:
            await self.engine.close()
            raise

    async def close(self) -> None:
        await self.engine.close()
