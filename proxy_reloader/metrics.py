"""proxy-reloader's own metrics, served beside nginx's per-request metrics on --admin /metrics."""
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

RENDERS = Counter("proxy_reloader_renders_total", "Times the wanted routes were computed and applied")
APPLIED = Counter("proxy_reloader_applied_total", "Changes applied to nginx, by way (push, reload) and result",
                  ["way", "result"])
APPLY_SECONDS = Histogram("proxy_reloader_apply_seconds", "Time to apply a change to nginx, by way", ["way"],
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


class _WatchErrors:
    """Consul blocking queries that failed, as counted by the catalog mirror."""
    def __init__(self, mirror):
        self.mirror = mirror

    def collect(self):
        yield CounterMetricFamily("proxy_reloader_consul_watch_errors", "Consul blocking queries that failed",
                                  value=self.mirror.errors)


def count_watch_errors(mirror) -> None:
    REGISTRY.register(_WatchErrors(mirror))


class _Certificates:
    """Days until each served certificate expires (the alert rule fires under 14), but those the
    stack issued for host names no longer routed, which it no longer renews (CertificateBook.watched)."""
    def __init__(self, book):
        self.book = book

    def collect(self):
        family = GaugeMetricFamily("proxystack_certificate_days_left",
                                   "Days until a served certificate expires, by name and source", labels=["name", "source"])
        for name, cert in self.book.watched().items():
            family.add_metric([name, cert.source], round(cert.days_left(), 3))
        yield family


def report_certificates(book) -> None:
    REGISTRY.register(_Certificates(book))
