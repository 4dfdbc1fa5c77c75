"""Rule-based provider routing (SPEC section 7): load routing.yaml, pick candidates."""

from routing.explain import explain
from routing.loader import RoutingConfigError, RoutingIssue, load_routing, parse_routing
from routing.rules import Conditions, ProviderInfo, RoutingTable, Rule
from routing.select import Decision, NoRouteError, RouteRequest, decide, split_bucket

__all__ = [
    "Conditions",
    "Decision",
    "NoRouteError",
    "ProviderInfo",
    "RouteRequest",
    "RoutingConfigError",
    "RoutingIssue",
    "RoutingTable",
    "Rule",
    "decide",
    "explain",
    "load_routing",
    "parse_routing",
    "split_bucket",
]
