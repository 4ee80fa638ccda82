"""The whole of what the stack keeps in Consul behind one object: every method stands for one
of a store of `catalog.stores`."""
from __future__ import annotations

from .consul_client import ConsulClient
from .stores import Stores


def _delegate(store: str, method: str):
    def call(self, *args, **kwargs):
        return getattr(getattr(self.stores, store), method)(*args, **kwargs)
    call.__name__ = method
    return call


class ConsulStore:
    def __init__(self, *args, **kwargs):
        self.consul = ConsulClient(*args, **kwargs)
        self.stores = Stores.over(self.consul)
        self.address, self.max_wait = self.consul.address, self.consul.max_wait

    def __getattr__(self, name):
        return getattr(self.consul, name)        # KV, sessions, locks, leader()

    register = _delegate("instances", "register")
    deregister = _delegate("instances", "deregister")
    local_instances = _delegate("instances", "local")
    set_docker_health = _delegate("instances", "set_docker_health")
    apply_gate = _delegate("instances", "apply_gate")
    local_gate_checks = _delegate("instances", "gate_checks")
    node_name = _delegate("instances", "node_name")
    service_names = _delegate("instances", "service_names")
    instances = _delegate("instances", "of")
    all_instances = _delegate("instances", "all")
    wait_service = _delegate("instances", "wait_service")
    wait_checks = _delegate("instances", "wait_checks")
    record_rejection = _delegate("rejections", "put")
    forget_rejection = _delegate("rejections", "forget")
    rejections = _delegate("rejections", "all")
    set_gate = _delegate("node_records", "set_gate")
    gate_records = _delegate("node_records", "gates")
    request_action = _delegate("node_records", "request_action")
    withdraw_action = _delegate("node_records", "withdraw_action")
    action_records = _delegate("node_records", "actions")
    verdict = _delegate("verdicts", "get")
    put_verdict = _delegate("verdicts", "put")
    verdict_ids = _delegate("verdicts", "ids")
    forget_verdict = _delegate("verdicts", "forget")
    request_retest = _delegate("verdicts", "request_retest")
    retest_requests = _delegate("verdicts", "retests")
    clear_retest = _delegate("verdicts", "clear_retest")
    policy_services = _delegate("policies", "services")
    forget_service = _delegate("policies", "forget_service")
    policy = _delegate("policies", "get")
    put_policy = _delegate("policies", "put")
    default_tests_image = _delegate("policies", "tests_image")
    set_default_tests_image = _delegate("policies", "set_tests_image")
    wait_gatekeeper_state = _delegate("policies", "wait")
    analysis = _delegate("analysis", "get")
    put_analysis = _delegate("analysis", "put")
    scaling = _delegate("scaling", "get")
    put_scaling = _delegate("scaling", "put")
    healing = _delegate("healing", "get")
    healing_records = _delegate("healing", "all")
    put_healing = _delegate("healing", "put")
    add_history = _delegate("history", "add")
    history = _delegate("history", "of")
    report_served = _delegate("proxies", "report")
    forget_served = _delegate("proxies", "forget")
    proxies = _delegate("proxies", "all")
    served = _delegate("proxies", "served")
    self_reporter = _delegate("proxies", "self_report")
    announce_metrics = _delegate("proxies", "announce_metrics")
    withdraw = _delegate("proxies", "withdraw")
