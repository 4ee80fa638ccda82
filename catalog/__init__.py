"""The service catalog shared by every part of the stack.

`model` holds the frozen dataclasses that cross boundaries, `validation` the allow-list every
value passes before it is stored or rendered, `consul_client` the one way to reach Consul,
`stores` a store per owner of what Consul keeps (built on that client), and `retry` the single
retry policy.
"""
