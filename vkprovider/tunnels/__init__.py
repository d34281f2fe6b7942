"""Tunnels carry base facts in and biz commands out: HTTP (heartbeat server + arklet client) and MQTT."""
