"""Graph checks of a DAG spec (ids, edges, cycles, input wiring) and its deterministic topological order."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fabric.errors import MAX_PROBLEMS, ErrorCode, Problem, SpecError
from fabric.spec._text import Suggester
from fabric.spec.conditions import condition_problems, when_roots
from fabric.spec.exits import exit_problems
from fabric.spec.mapping import map_problems
from fabric.spec.notify import node_deadline_problems
from fabric.spec.params import reference_problems

if TYPE_CHECKING:
    from fabric.spec.models import DagSpec


# Everything here is linear in the nodes and edges (sets of nodes are bitsets, so a check against every
# ancestor is one integer operation), and did-you-mean hints, the costly part of a problem, are worked out
# only for the problems an error lists (MAX_PROBLEMS): a 10,000-node spec with a problem in every node
# is answered in well under a second.
class _Graph:
    """The usable part of a possibly malformed raw spec: first-seen node ids and well-formed edges."""

    def __init__(self, raw: Mapping[str, Any], problems: list[Problem]) -> None:
        self.order: list[str] = []
        self.pos: dict[str, int] = {}
        self.at: dict[int, str] = {}  # pos -> id
        self.nodes: dict[str, Mapping[str, Any]] = {}
        self.children: dict[str, list[str]] = {}
        self.parents: dict[str, list[str]] = {}
        self.edge_where: dict[tuple[str, str], str] = {}
        self._suggest: Suggester | None = None
        self._known = ""
        nodes = raw.get("nodes")
        for i, node in enumerate(nodes if isinstance(nodes, list) else []):
            node_id = node.get("id") if isinstance(node, Mapping) else None
            if not isinstance(node_id, str) or not node_id:
                continue
            if node_id in self.pos:
                problems.append(Problem(
                    ErrorCode.SPEC_DUPLICATE_ID, f"nodes[{i}].id",
                    f"duplicate node id {node_id!r}: nodes[{self.pos[node_id]}] already uses it",
                    "give every node a unique id"))
                continue
            self.pos[node_id] = i
            self.at[i] = node_id
            self.order.append(node_id)
            self.nodes[node_id] = node
            self.children[node_id] = []
            self.parents[node_id] = []
        self.derived = raw.get("edges") is None  # omitted: the edges are the data dependencies
        self.reported: set[tuple[str, int]] = set()  # ins entries whose problem derivation already reported
        if self.derived:
            for node_id, k, producer in _data_dependencies(self, problems):
                self._add(producer, node_id, f"nodes[{node_id}].ins[{k}]" if k >= 0 else f"nodes[{node_id}].when")
            return
        edges = raw.get("edges")
        for j, edge in enumerate(edges if isinstance(edges, list) else []):
            if isinstance(edge, Mapping):
                self._add_edge(j, edge, problems)

    def _add(self, src: str, dst: str, where: str) -> None:
        if (src, dst) not in self.edge_where:
            self.edge_where[(src, dst)] = where
            self.children[src].append(dst)
            self.parents[dst].append(src)

    def _add_edge(self, j: int, edge: Mapping[str, Any], problems: list[Problem]) -> None:
        src = edge.get("from", edge.get("from_"))
        dst = edge.get("to")
        usable = True
        for key, end in (("from", src), ("to", dst)):
            if not isinstance(end, str) or not end:
                usable = False  # a field error, reported by the model
            elif end not in self.pos:
                usable = False
                if self._suggest is None:
                    self._suggest = Suggester(self.order)
                    self._known = ", ".join(self.order[:20]) + (", ..." if len(self.order) > 20 else "")
                hint = self._suggest(end) if len(problems) < MAX_PROBLEMS else ""
                problems.append(Problem(ErrorCode.SPEC_DANGLING_EDGE, f"edges[{j}].{key}",
                                        f"edge refers to unknown node {_short(end)!r}",
                                        f"{hint}use the id of a node: {self._known}".strip()))
        if not usable:
            return
        assert isinstance(src, str) and isinstance(dst, str)
        if src == dst:
            message = f"node {src!r} has an edge to itself"
            problems.append(Problem(ErrorCode.SPEC_CYCLE, f"edges[{j}]", message, "remove this edge"))
            return
        self._add(src, dst, f"edges[{j}]")

    def components(self) -> list[list[str]]:
        """Strongly connected components (Tarjan, iterative), in reverse topological order."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        result: list[list[str]] = []
        for root in self.order:
            if root in index:
                continue
            index[root] = low[root] = len(index)
            stack.append(root)
            on_stack.add(root)
            work = [(root, iter(self.children[root]))]
            while work:
                v, it = work[-1]
                for w in it:
                    if w not in index:
                        index[w] = low[w] = len(index)
                        stack.append(w)
                        on_stack.add(w)
                        work.append((w, iter(self.children[w])))
                        break
                    if w in on_stack:
                        low[v] = min(low[v], index[w])
                else:
                    work.pop()
                    if work:
                        u = work[-1][0]
                        low[u] = min(low[u], low[v])
                    if low[v] == index[v]:
                        component: list[str] = []
                        while True:
                            w = stack.pop()
                            on_stack.discard(w)
                            component.append(w)
                            if w == v:
                                break
                        result.append(component)
        return result

    def cycle_in(self, component: list[str]) -> list[str]:
        """A shortest cycle through the component's first node (in spec order): [a, b, c] for a->b->c->a."""
        members = set(component)
        start = min(component, key=self.pos.__getitem__)
        came_from: dict[str, str] = {}
        queue = deque([start])
        while queue:
            v = queue.popleft()
            for w in self.children[v]:
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return path[::-1]
                if w in members and w not in came_from:
                    came_from[w] = v
                    queue.append(w)
        return [start]  # pragma: no cover - a component of several nodes always has a cycle through start


def _short(text: str, limit: int = 200) -> str:
    """A name as an error quotes it: a 100 KB "node id" is not repeated back in full."""
    return text if len(text) <= limit else f"{text[:limit]}..."


def _ids(graph: _Graph, mask: int, limit: int) -> tuple[list[str], int]:
    """The first `limit` node ids in a bitset (in spec order), and how many more it holds."""
    ids: list[str] = []
    while mask and len(ids) < limit:
        low = mask & -mask
        ids.append(graph.at[low.bit_length() - 1])
        mask ^= low
    return ids, mask.bit_count()


def _and_more(ids: list[str], more: int, quote: bool = False) -> str:
    text = ", ".join(map(repr, ids) if quote else ids)
    return f"{text} and {more} more" if more else text


def _producers(graph: _Graph) -> dict[str, int]:
    """Each out name -> the bitset of the nodes that produce it."""
    producers: dict[str, int] = {}
    for node_id in graph.order:
        outs = graph.nodes[node_id].get("outs")
        bit = 1 << graph.pos[node_id]
        for name in outs if isinstance(outs, list) else []:
            if isinstance(name, str):
                producers[name] = producers.get(name, 0) | bit
    return producers


def _inputs(graph: _Graph, node_id: str) -> list[tuple[int, str]]:
    """(ins index, the out name it reads) of a node's well-formed ins entries."""
    ins = graph.nodes[node_id].get("ins")
    # `param=out` reads the upstream out `out`
    return [(k, entry.partition("=")[2] or entry) for k, entry in enumerate(ins if isinstance(ins, list) else [])
            if isinstance(entry, str)]


def _data_dependencies(graph: _Graph, problems: list[Problem]) -> list[tuple[str, int, str]]:
    """(node, ins index, producer) for every input that exactly one other node produces; an input that
    several nodes produce is a problem here (which one is meant cannot be told without edges)."""
    producers = _producers(graph)
    found = []
    for node_id in graph.order:
        itself_bit = 1 << graph.pos[node_id]
        for k, name in _inputs(graph, node_id):
            candidates = producers.get(name, 0) & ~itself_bit
            if not candidates:
                continue
            first, more = _ids(graph, candidates, 6)
            if len(first) == 1:
                found.append((node_id, k, first[0]))
            else:
                graph.reported.add((node_id, k))
                problems.append(Problem(
                    ErrorCode.SPEC_UNWIRED_INPUT, f"nodes[{node_id}].ins[{k}]",
                    f"input {_short(name)!r} is produced by several nodes ({_and_more(first, more)}), and the spec "
                    "has no edges to tell which one it reads",
                    "rename the output so that one node produces it, or give edges (then each input is read "
                    "from its one upstream producer)"))
        for root in when_roots(graph.nodes[node_id]):  # a condition's reads are data dependencies too
            candidates = producers.get(root, 0) & ~itself_bit
            first, _ = _ids(graph, candidates, 2)
            producer = first[0] if len(first) == 1 else root if root in graph.pos and root != node_id else None
            if producer is not None:
                found.append((node_id, -1, producer))
    return found


def _cycle_problems(graph: _Graph, components: list[list[str]]) -> list[Problem]:
    problems = []
    for component in reversed(components):
        if len(component) < 2:
            continue
        cycle = graph.cycle_in(component)
        closing = (cycle[-1], cycle[0])
        text = " -> ".join([*cycle, cycle[0]])
        fix = (f"remove one edge of the cycle, e.g. {{from: {closing[0]}, to: {closing[1]}}}" if not graph.derived
               else f"the edges are derived from ins/outs: {closing[1]!r} must not read an output of "
                    f"{closing[0]!r}, or rename one of the outputs")
        where = graph.edge_where[closing]
        problems.append(Problem(ErrorCode.SPEC_CYCLE, where, f"cycle: {text}", fix))
    return problems


def _ancestor_masks(graph: _Graph, components: list[list[str]]) -> dict[str, int]:
    """For each node, a bitset (by spec position) of its ancestors; nodes on a cycle include themselves."""
    comp_of = {v: k for k, comp in enumerate(components) for v in comp}
    members = [sum(1 << graph.pos[v] for v in comp) for comp in components]
    masks = [0] * len(components)
    for k in reversed(range(len(components))):  # sources first
        mask = members[k] if len(components[k]) > 1 else 0
        for v in components[k]:
            for p in graph.parents[v]:
                c = comp_of[p]
                if c != k:
                    mask |= masks[c] | members[c]
        masks[k] = mask
    return {v: masks[comp_of[v]] for v in graph.order}


def _wiring_problems(graph: _Graph, ancestors: dict[str, int]) -> list[Problem]:
    producers = _producers(graph)
    suggest = Suggester(producers)
    problems: list[Problem] = []
    for node_id in graph.order:
        itself_bit = 1 << graph.pos[node_id]
        for k, name in _inputs(graph, node_id):
            if (node_id, k) in graph.reported:
                continue
            where = f"nodes[{node_id}].ins[{k}]"
            produced = producers.get(name, 0)
            candidates = produced & ~itself_bit
            upstream = candidates & ancestors[node_id]
            if not candidates:
                itself = " other than the node itself" if produced else ""
                hint = suggest(name, exclude=name) if len(problems) < MAX_PROBLEMS else ""
                problems.append(Problem(
                    ErrorCode.SPEC_UNWIRED_INPUT, where,
                    f"input {_short(name)!r} is not produced by any node{itself}",
                    f"{hint}add {_short(name)!r} to the outs of an upstream node, or remove it from ins"))
            elif not upstream:
                first, more = _ids(graph, candidates, 6)
                others = f" (or from one of: {_and_more(first[1:], more)})" if len(first) > 1 else ""
                problems.append(Problem(
                    ErrorCode.SPEC_UNWIRED_INPUT, where,
                    f"input {_short(name)!r} is produced by {_and_more(first, more, quote=True)}, "
                    f"which is not upstream of {node_id!r}: the edges are given, so they must include every "
                    "data dependency",
                    f"add edge {{from: {first[0]}, to: {node_id}}}{others}, or omit edges to derive "
                    "them from ins/outs"))
            elif upstream & (upstream - 1):  # two bits or more
                first, more = _ids(graph, upstream, 5)
                problems.append(Problem(
                    ErrorCode.SPEC_UNWIRED_INPUT, where,
                    f"input {_short(name)!r} is ambiguous: several upstream nodes produce it: "
                    f"{_and_more(first, more)}",
                    "rename the output in all but one of them so that each input has exactly one producer"))
    return problems


def graph_problems(raw: Mapping[str, Any] | DagSpec) -> list[Problem]:
    """Every graph problem of a spec, on its raw dict form (tolerates malformed nodes and edges)."""
    if not isinstance(raw, Mapping):
        if not hasattr(raw, "model_dump"):
            return []
        raw = raw.model_dump(by_alias=True)
    problems: list[Problem] = []
    graph = _Graph(raw, problems)
    components = graph.components()
    problems.extend(_cycle_problems(graph, components))
    ancestors = _ancestor_masks(graph, components)
    problems.extend(_wiring_problems(graph, ancestors))
    problems.extend(condition_problems(raw, lambda n: _ids(graph, ancestors.get(n, 0), len(graph.order))[0]))
    problems.extend(reference_problems(raw))  # node params naming undeclared pipeline params
    problems.extend(node_deadline_problems(raw))
    problems.extend(map_problems(raw))  # map.over names one of the node's inputs
    problems.extend(exit_problems(raw, graph.edge_where))
    return problems


def derive_edges(raw: Mapping[str, Any]) -> list[dict[str, str]]:
    """The edges of a spec that omits them: one per data dependency (an input and its one producer), in node
    order. Ambiguous or unproduced inputs give no edge (graph_problems reports them)."""
    graph = _Graph({"nodes": raw.get("nodes")}, [])
    return [{"from": src, "to": dst} for (src, dst) in graph.edge_where]


def topological_order(spec: DagSpec) -> list[str]:
    """Node ids in dependency order (Kahn); among ready nodes the one earliest in the spec goes first."""
    order = [node.id for node in spec.nodes]
    pos = {node_id: i for i, node_id in enumerate(order)}
    children: dict[str, list[str]] = {node_id: [] for node_id in order}
    indegree = dict.fromkeys(order, 0)
    for edge in dict.fromkeys((e.from_, e.to) for e in spec.edges):
        children[edge[0]].append(edge[1])
        indegree[edge[1]] += 1
    ready = [pos[n] for n in order if indegree[n] == 0]
    heapq.heapify(ready)
    result: list[str] = []
    while ready:
        node_id = order[heapq.heappop(ready)]
        result.append(node_id)
        for child in children[node_id]:
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(ready, pos[child])
    if len(result) != len(order):
        raise SpecError.from_problems(graph_problems(spec) or [Problem(
            ErrorCode.SPEC_CYCLE, "edges", "the graph has a cycle", "remove an edge of the cycle")])
    return result
