"""Publishers for the outbox: each returns only after the broker acknowledged each message.

``RabbitMQ`` (publisher confirms), ``NATS`` (JetStream, de-duplicated by ``Nats-Msg-Id``),
``RedisStreams`` (``XADD``), and ``Callable`` for anything else. Each message carries its outbox
id so consumers can de-duplicate. The broker clients are extras: ``sluice[rabbitmq]``,
``sluice[nats]``, ``sluice[redis]``; a publisher whose client is missing raises ``ConfigError``
when it is created.
"""

from sluice.outbox.brokers.function import Callable
from sluice.outbox.brokers.nats import NATS
from sluice.outbox.brokers.rabbitmq import RabbitMQ
from sluice.outbox.brokers.redis import RedisStreams
from sluice.outbox.message import OutboxMessage
from sluice.outbox.publisher import Outcome, Publisher

__all__ = ["NATS", "Callable", "OutboxMessage", "Outcome", "Publisher", "RabbitMQ", "RedisStreams"]
