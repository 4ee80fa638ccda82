"""proxy_reloader: Consul -> nginx, validated, debounced, reloaded gracefully.

`view` reads what to route from Consul, `render` turns it into an nginx config, `nginx`
validates, swaps and reloads it, `runner` joins them with blocking-query watches and a
quiescence timer, after consul-template's watch/render/run split.
"""
