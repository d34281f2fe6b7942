"""The MQTT tunnel: bases that run arklet's MqttTunnel talk to vkprovider through a broker.

Arklet over MQTT is fire-and-forget in both directions: bases publish heartbeats and answers on
``koupleless_{env}/{identity}/base/<kind>`` and read commands from ``koupleless_{env}/{identity}/<command>``.
This package turns that back into the request/response ``Tunnel`` API the controllers use (a command waits for
the matching answer, with a timeout) and avoids the Go controller's known faults: commands are published at QoS 1
and never retained (``topics``); the subscriptions are a fixed set of wildcards made again on every reconnect,
and TLS always verifies the broker (``connection``); a message's age window is wide enough for ordinary clock
skew, and retained, oversized and malformed messages are dropped and counted, never fatal (``topics``,
``tunnel``); biz lists are placed by the base's own clock, never by when they arrive (``answers``, issue 27).

One module per job, each saying why it exists:

- ``topics``: the pure wire - topics, the ``{publishTimestamp, data}`` envelope, why a message is dropped;
- ``answers``: callers waiting for answers (futures by key, one command per key, timeouts) and the biz lists'
  order;
- ``connection``: the one broker connection - connect, subscribe, publish, reconnect with backoff, TLS;
- ``tunnel``: ``MqttTunnel`` itself - what each message means, and each command as a publish plus a wait.
"""

from __future__ import annotations

from vkprovider.tunnels.mqtt.tunnel import MqttTunnel

__all__ = ["MqttTunnel"]
