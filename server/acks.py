"""Acks wait for persistence. A broker may report a message persisted before the publish
call that created it has returned, so recently persisted ids are remembered briefly."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from storage.models import Message

AckCallback = Callable[[Message], None]
_REMEMBERED = 65536


class AckTracker:
    def __init__(self) -> None:
        self._waiting: dict[str, list[AckCallback]] = {}
        self._persisted: OrderedDict[str, Message] = OrderedDict()

    def expect(self, message_id: str, callback: AckCallback) -> None:
        done = self._persisted.get(message_id)
        if done is not None:
            callback(done)
            return
        self._waiting.setdefault(message_id, []).append(callback)

    def persisted(self, messages: Sequence[Message]) -> None:
        for message in messages:
            callbacks = self._waiting.pop(message.id, None)
            if callbacks is None:
                self._persisted[message.id] = message
                if len(self._persisted) > _REMEMBERED:
                    self._persisted.popitem(last=False)
                continue
            for callback in callbacks:
                callback(message)

    def pending(self) -> int:
        return len(self._waiting)
