"""Alerts to MQTT: every event on an alert topic, and what is open now on retained state topics.

    {prefix}/alerts/{kind}/{group}/{device}/{metric}         open, update, resolve (QoS 1)
    {prefix}/state/{kind}/{group}/{device}/{metric}/{rule}   retained while open; an empty
                                                             retained message clears it

so a dashboard that subscribes to ``{prefix}/state/#`` later sees the alerts open now.
Segments pass through ``topics.sanitise_segment``.
"""

from __future__ import annotations

from streamproc.alerts import Alert
from streamproc.sources.mqtt import MqttConnection
from streamproc.topics import sanitise_segment


class AlertPublisher:
    def __init__(self, connection: MqttConnection, prefix: str):
        self.connection = connection
        self.prefix = prefix

    def __call__(self, alerts: list[Alert]) -> None:
        publish = self.connection.publish
        for a in alerts:
            path = "/".join(map(sanitise_segment, (a.kind, a.group, a.device, a.metric)))
            body = a.to_json()
            publish(f"{self.prefix}/alerts/{path}", body, qos=1)
            state = f"{self.prefix}/state/{path}/{sanitise_segment(a.rule)}"
            publish(state, b"" if a.event == "resolve" else body, qos=1, retain=True)
