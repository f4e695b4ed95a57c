"""Keeps a running node's keys current without a restart.

Every ``key_reload_s`` seconds (at once on SIGHUP) the node re-reads the master keyring and
JWT key files if they changed, and drops the cached keys of tenants whose key material was
destroyed by another process. Environment-sourced keys never change under a running process;
their pending versions still activate on time.

Why reloading is safe across several gateways: a rotation never makes a new version active
immediately. It writes it as pending with an activation time at least a few reload intervals
ahead, so by the time any node encrypts (or signs) with it, every node has reloaded and can
decrypt (or verify) with it. Retiring only ever removes versions nothing uses any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from server.auth.tokens import AccessTokens, SigningKeys
from server.config import Settings
from server.keyfiles import jwt_keys_path, master_keys_path
from storage.crypto import MessageCipher
from storage.keys import MasterKeyring

_log = logging.getLogger("baychat.keys")
Signature = tuple[int, int, int]


def _signature(path: Path) -> Signature | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class KeyReloader:
    def __init__(self, settings: Settings, cipher: MessageCipher, access: AccessTokens) -> None:
        self._settings = settings
        self._cipher = cipher
        self._access = access
        self._master = None if settings.master_keys else master_keys_path(settings)
        self._jwt = None if settings.jwt_keys else jwt_keys_path(settings)
        self._seen: dict[Path, Signature | None] = {
            path: _signature(path) for path in (self._master, self._jwt) if path is not None
        }
        self._wake = asyncio.Event()

    def request(self) -> None:
        """Reload now (the SIGHUP handler)."""
        self._wake.set()

    def check(self) -> list[str]:
        """One pass; returns what changed (for logs and tests)."""
        changed: list[str] = []
        if self._master is not None and self._changed(self._master):
            try:
                ring = MasterKeyring.from_json(self._master.read_bytes())
            except (OSError, ValueError, KeyError) as exc:
                _log.error("master keyring not reloaded: %s", type(exc).__name__)
            else:
                self._cipher.use_keyring(ring)
                changed.append("master-keys")
        if self._jwt is not None and self._changed(self._jwt):
            try:
                keys = SigningKeys.from_json(self._jwt.read_bytes())
            except (OSError, ValueError, KeyError) as exc:
                _log.error("JWT keys not reloaded: %s", type(exc).__name__)
            else:
                self._access.use_keys(keys)
                changed.append("jwt-keys")
        for tenant_id in self._cipher.forget_shredded():
            changed.append(f"tenant-shredded:{tenant_id}")
        if changed:
            _log.info("keys reloaded", extra={"event": "keys.reload", "changed": changed})
        return changed

    def _changed(self, path: Path) -> bool:
        now = _signature(path)
        if now == self._seen.get(path):
            return False
        self._seen[path] = now
        return now is not None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        installed = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.request)
            installed = True
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._settings.key_reload_s)
                self._wake.clear()
                try:
                    self.check()
                except Exception:
                    _log.exception("key reload failed")
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGHUP)
