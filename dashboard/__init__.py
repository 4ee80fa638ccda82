"""The dashboard: the services, their gates and their rollouts at a glance, live.

    python -m dashboard --listen 127.0.0.1:8005 --consul 127.0.0.1:8500 --prometheus URL [--allow-actions]

Operators log in with a Consul ACL token and see what that token may read: every service with
its mode, versions, instances per host, traffic and state (`views`); one service's instances,
test output, history and its last progressive rollout as a chart (`chart`); pages follow
Consul live over server-sent events fed by blocking queries (`live`); with --allow-actions and a
token that may write policies, promote, weight, abort and rollback (`actions`), confirmed and
recorded in the history. `server` holds the routes, the sessions (`sessions`) and the security
headers.
"""
