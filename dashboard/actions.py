"""The dashboard's actions: the CLI's promote, weight, abort and rollback, with the logged-in
token (Consul refuses a token that may not write policies) and recorded in the service's
history as `dashboard (WHO)`."""
from __future__ import annotations

from catalog.stores import Stores
from catalog.validation import InvalidValue
from gatekeeper.promotion.promoter import abort, promote, rollback, set_weight

ACTIONS = ("promote", "weight", "abort", "rollback")


class UnknownAction(ValueError):
    pass


def perform(stores: Stores, service: str, action: str, weight: str, by: str) -> str:
    """Carry out one action; the message the CLI would print. PromotionError (a Refused) or
    InvalidValue when it cannot be done, with the reason."""
    if action == "promote":
        return promote(stores, service, by=by)[1]
    if action == "weight":
        try:
            value = int(weight)
        except ValueError:
            raise InvalidValue("weight", weight, "a whole number from 0 to 100") from None
        return set_weight(stores, service, value, by=by)[1]
    if action == "abort":
        return abort(stores, service, why="asked on the dashboard", by=by)[1]
    if action == "rollback":
        return rollback(stores, service, by=by)[1]
    raise UnknownAction(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
