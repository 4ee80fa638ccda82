"""registrator's metrics (served with --metrics, see catalog.metrics)."""
from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("registrator_docker_events_total", "Docker container events handled, by action", ["action"])
REGISTRATIONS = Counter("registrator_registrations_total", "Instances registered (or re-registered) in Consul")
DEREGISTRATIONS = Counter("registrator_deregistrations_total", "Instances removed from Consul, by cause", ["cause"])
REJECTIONS = Counter("registrator_rejections_total", "Containers refused registration for invalid labels")
RESYNC_SECONDS = Histogram("registrator_resync_seconds", "Duration of a full resync with the running containers",
                           buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
TOKEN_REFUSED = Gauge("registrator_consul_token_refused",
                      "1 while Consul refuses registrator's token (revoked, or without the rights): this host's "
                      "containers are neither registered nor removed until a valid token is in its file")
RETRIES = Counter("registrator_retries_total", "Calls retried because Consul or Docker did not answer")
