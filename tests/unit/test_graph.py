"""Dependency order: what starts together, what stops first, and cycles printed as cycles."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.errors import UserError
from corral.manifest.graph import DependencyCycle, DependencyGraph

SHOP = {"web": ["orders"], "orders": ["inventory", "payments"], "inventory": [], "payments": []}


def test_independent_services_start_together_and_dependents_after() -> None:
    graph = DependencyGraph(SHOP)
    assert graph.start_order() == [["inventory", "payments"], ["orders"], ["web"]]


def test_stop_order_stops_dependents_first() -> None:
    assert DependencyGraph(SHOP).stop_order() == [["web"], ["orders"], ["inventory", "payments"]]


def test_a_service_starts_as_soon_as_its_own_dependencies_allow() -> None:
    # `cache` depends on nothing but is needed only by `web`: it still starts in the first level.
    graph = DependencyGraph({"web": ["api", "cache"], "api": ["db"], "db": [], "cache": []})
    assert graph.start_order() == [["cache", "db"], ["api"], ["web"]]


def test_a_dependency_not_listed_as_a_key_is_still_a_node() -> None:
    graph = DependencyGraph({"api": ["db"]})
    assert graph.nodes == ["api", "db"]
    assert graph.start_order() == [["db"], ["api"]]


def test_dependents_are_direct_unless_asked_for_all() -> None:
    graph = DependencyGraph(SHOP)
    assert graph.dependents("inventory") == ["orders"]
    assert graph.dependents("inventory", transitive=True) == ["orders", "web"]
    assert graph.dependents("web") == []
    assert graph.dependents("unknown") == []
    assert graph.dependencies("orders") == ["inventory", "payments"]


def test_a_cycle_is_printed_from_its_smallest_name_back_to_it() -> None:
    graph = DependencyGraph({"worker": ["api"], "api": ["worker"], "db": []})
    assert graph.find_cycle() == ["api", "worker", "api"]


def test_the_shortest_way_round_a_cycle_is_shown() -> None:
    graph = DependencyGraph({"a": ["c", "b"], "b": ["a"], "c": ["d"], "d": ["a"]})
    assert graph.find_cycle() == ["a", "b", "a"]


def test_each_separate_cycle_is_reported() -> None:
    graph = DependencyGraph({"a": ["b"], "b": ["a"], "x": ["y"], "y": ["z"], "z": ["x"], "s": []})
    assert graph.find_cycles() == [["a", "b", "a"], ["x", "y", "z", "x"]]


def test_a_service_depending_on_itself_is_a_cycle() -> None:
    assert DependencyGraph({"api": ["api"]}).find_cycle() == ["api", "api"]


def test_an_acyclic_graph_has_no_cycle() -> None:
    assert DependencyGraph(SHOP).find_cycle() is None
    assert DependencyGraph({}).find_cycles() == []
    assert DependencyGraph({}).start_order() == []


def test_ordering_a_cycle_raises_a_user_error_naming_it() -> None:
    with pytest.raises(DependencyCycle) as caught:
        DependencyGraph({"api": ["worker"], "worker": ["api"]}).start_order()
    assert isinstance(caught.value, UserError)
    assert caught.value.message == "dependency cycle: api → worker → api"
    assert caught.value.cycle == ["api", "worker", "api"]


def test_a_deep_chain_does_not_hit_the_recursion_limit() -> None:
    edges = {f"s{i:05d}": [f"s{i + 1:05d}"] for i in range(5000)}
    graph = DependencyGraph(edges)
    assert graph.find_cycle() is None
    assert len(graph.start_order()) == 5001


names = st.sampled_from([f"s{i}" for i in range(12)])
graphs = st.dictionaries(names, st.lists(names, max_size=4), max_size=12)


@st.composite
def acyclic_graphs(draw: st.DrawFn) -> dict[str, list[str]]:
    count = draw(st.integers(min_value=0, max_value=15))
    order = [f"n{i}" for i in range(count)]
    draw(st.randoms(use_true_random=False)).shuffle(order)
    # Each node depends only on nodes earlier in a shuffled order: acyclic by construction.
    return {
        node: draw(st.lists(st.sampled_from(order[:i]), max_size=4)) if i else []
        for i, node in enumerate(order)
    }


@settings(max_examples=150, deadline=None)
@given(acyclic_graphs())
def test_start_order_respects_every_dependency(edges: dict[str, list[str]]) -> None:
    levels = DependencyGraph(edges).start_order()
    level_of = {name: index for index, level in enumerate(levels) for name in level}
    assert sorted(level_of) == sorted(edges)
    assert sum(len(level) for level in levels) == len(edges)
    for name, deps in edges.items():
        for dep in deps:
            assert level_of[dep] < level_of[name], f"{name} starts before its dependency {dep}"
    for level in levels:
        assert level == sorted(level)
        for name in level:
            assert not set(edges[name]) & set(level)


@settings(max_examples=150, deadline=None)
@given(graphs)
def test_a_reported_cycle_is_real_and_ordering_fails_exactly_when_there_is_one(
    edges: dict[str, list[str]],
) -> None:
    graph = DependencyGraph(edges)
    for cycle in graph.find_cycles():
        assert cycle[0] == cycle[-1] == min(cycle)
        for here, there in itertools.pairwise(cycle):
            assert there in graph.dependencies(here)
    if graph.find_cycle() is None:
        graph.start_order()
    else:
        with pytest.raises(DependencyCycle):
            graph.start_order()


@settings(max_examples=50, deadline=None)
@given(graphs, st.integers(min_value=0, max_value=2**32))
def test_results_do_not_depend_on_the_order_edges_were_given(
    edges: dict[str, list[str]], seed: int
) -> None:
    shuffled = list(edges.items())
    random.Random(seed).shuffle(shuffled)
    first, second = DependencyGraph(edges), DependencyGraph(dict(shuffled))
    assert first.find_cycles() == second.find_cycles()
    if first.find_cycle() is None:
        assert first.start_order() == second.start_order()
