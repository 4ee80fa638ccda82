"""The service catalog shared by every part of the stack.

`model` holds the frozen dataclasses that cross boundaries, `validation` the allow-list every
value passes before it is stored or rendered, `consul_store` the one adapter that speaks to
Consul, and `retry` the single retry policy.
"""
