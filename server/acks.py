"""Acks wait for persistence. A broker may report a message persisted before the publish
call that created it has returned, so recently persisted ids are remembered briefly."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Sequence

from storage.models import Message

AckCallback = Callable[[Message], None]
_REMEMBERED = 65536


class AckTracker:
    def __init__(self) -> None:
        # One callback, or a list when several wait for one message (a retried publish): no
        # list per message in the common case, one object less for the garbage collector.
        self._waiting: dict[str, AckCallback | list[AckCallback]] = {}
        self._persisted: OrderedDict[str, Message] = OrderedDict()

    def expect(self, message_id: str, callback: AckCallback) -> None:
        done = self._persisted.get(message_id)
        if done is not None:
            callback(done)
            return
        waiting = self._waiting.get(message_id)
        if waiting is None:
            self._waiting[message_id] = callback
        elif isinstance(waiting, list):
            waiting.append(callback)
        else:
            self._waiting[message_id] = [waiting, callback]

    async def wait(self, message_id: str, timeout: float) -> Message:
        """The message once it is persisted; ``TimeoutError`` after ``timeout`` seconds
        (the waiter is then forgotten)."""
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

        def done(message: Message) -> None:
            if not future.done():
                future.set_result(message)

        self.expect(message_id, done)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            waiting = self._waiting.get(message_id)
            if waiting is done:
                del self._waiting[message_id]
            elif isinstance(waiting, list) and done in waiting:
                waiting.remove(done)
                if not waiting:
                    del self._waiting[message_id]

    def persisted(self, messages: Sequence[Message]) -> None:
        for message in messages:
            callbacks = self._waiting.pop(message.id, None)
            if callbacks is None:
                self._persisted[message.id] = message
                if len(self._persisted) > _REMEMBERED:
                    self._persisted.popitem(last=False)
                continue
            if isinstance(callbacks, list):
                for callback in callbacks:
                    callback(message)
            else:
                callbacks(message)

    def pending(self) -> int:
        return len(self._waiting)
