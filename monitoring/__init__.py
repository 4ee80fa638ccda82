"""Prometheus for the stack: its configuration and rules, and the watcher that tells it where
every daemon's metrics endpoint is.

Debian's Prometheus 2.42 is built without Consul service discovery, so the stack does what
consul-template does for other programs: `python -m monitoring.targets` follows the
`proxystack-metrics` service in Consul with a blocking query (with Prometheus's own read-only
token) and writes the endpoints as a file_sd file, which Prometheus re-reads when it changes.
"""
