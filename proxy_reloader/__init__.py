"""proxy_reloader: Consul -> nginx, validated, debounced; routes reloaded, instances pushed.

`catalog.mirror` watches Consul, `view` turns each service's data into a route, `render`
writes the nginx config (routes only, in dynamic mode), `nginx` validates, swaps and reloads it,
`backends` is the table pushed to nginx's Lua balancer (`lua/`) through `push`, `served`
publishes what nginx serves for `gatekeeper wait`, and `runner` joins them with a quiescence
timer, after consul-template's watch/render/run split.
"""
