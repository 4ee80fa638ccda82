"""The fleet of a service's containers: `swarm` is the one Swarm adapter; `rollout` takes Swarm
rolling updates through the gate; `scaling` decides replica counts (pure) and `autoscaler`
applies them from live load; `healer` restarts or replaces an admitted instance gone unhealthy."""
