"""registrator: Docker containers' published ports -> Consul service instances.

`docker_source` is the Docker adapter, `translate` turns one container into instances (and
validates every label), `bridge` keeps Consul in step with Docker, `runner` joins them in the
order events-then-sync-then-resync.
"""
