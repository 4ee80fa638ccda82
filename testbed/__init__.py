"""The stack's real parts started as processes for the tests and the benchmarks alike: a Consul
server with ACLs (processes), the whole stack on a port of its own (stack), clients that count
every failed request (load), nginx's worker generations (nginx_workers), Swarm services
(swarm), a fleet of Consul agents (consul_fleet), hosts in network namespaces (cluster) and a
local image registry (delivery). Nothing here is a fake: tests/support holds the fakes that unit
tests use."""
