#!/usr/bin/env python3
"""Import cycles between the top-level modules of `nodes/src`.

Every `crate::<module>` path in a file (in `use` declarations and inline paths alike, so
`crate::s2s::messages::SendRemote` in an expression counts) is an edge from the file's
top-level module to `<module>`; `super::` paths stay inside a module. Comments and string
literals are skipped. The strongly connected components of that graph with more than one
module are the cycles; for each, one shortest cycle through each edge's pair is printed with
the files that make it, so it is clear which import to move.

Usage: scripts/import-cycles.py [--check] [--root nodes/src]
  --check   exit 1 if there is any cycle (for CI)
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict, deque
from pathlib import Path

CRATE_PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
# `use crate::{a, b::c}`: a group at the crate root.
CRATE_GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)
BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)
LINE_COMMENT = re.compile(r"//[^\n]*")
STRING = re.compile(r'"(?:\\.|[^"\\])*"')


def strip(source: str) -> str:
    """The code without comments (doc comments included) and string literals."""
    source = BLOCK_COMMENT.sub(" ", source)
    source = STRING.sub('""', source)
    return LINE_COMMENT.sub(" ", source)


def top_module(root: Path, path: Path) -> str | None:
    rel = path.relative_to(root)
    if len(rel.parts) == 1:
        name = rel.stem
        return None if name in ("lib", "main") else name
    return rel.parts[0]


def edges(root: Path) -> dict[str, dict[str, set[str]]]:
    """module -> imported module -> files of `module` that import it."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in sorted(root.rglob("*.rs")):
        module = top_module(root, path)
        if module is None:
            continue
        graph[module]  # every module is a node, importing or not
        code = strip(path.read_text(encoding="utf-8"))
        targets = set(CRATE_PATH.findall(code))
        for group in CRATE_GROUP.findall(code):
            for item in group.split(","):
                name = item.strip().split("::")[0].strip()
                if re.fullmatch(r"[a-z_][a-z0-9_]*", name or ""):
                    targets.add(name)
        for target in targets:
            if target != module and target != "self":
                graph[module][target].add(str(path.relative_to(root)))
    return graph


def components(graph) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out, key=lambda c: (-len(c), c))


def shortest_path(graph, start: str, goal: str, within: set[str]) -> list[str] | None:
    prev = {start: None}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        if v == goal:
            path = []
            while v is not None:
                path.append(v)
                v = prev[v]
            return path[::-1]
        for w in sorted(graph.get(v, {})):
            if w in within and w not in prev:
                prev[w] = v
                queue.append(w)
    return None


def cycles_in(graph, comp: list[str]) -> list[list[str]]:
    """For each edge a -> b inside the component, the shortest cycle a -> b -> ... -> a;
    each distinct cycle once (rotated to start at its smallest module)."""
    within = set(comp)
    seen = set()
    found = []
    for a in comp:
        for b in sorted(graph[a]):
            if b not in within:
                continue
            back = shortest_path(graph, b, a, within)
            if back is None:
                continue
            cycle = [a] + back[:-1]
            i = cycle.index(min(cycle))
            key = tuple(cycle[i:] + cycle[:i])
            if key not in seen:
                seen.add(key)
                found.append(list(key))
    return sorted(found, key=lambda c: (len(c), c))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if there is a cycle")
    parser.add_argument("--root", default=None, help="source root (default: nodes/src)")
    args = parser.parse_args()
    root = Path(args.root) if args.root else Path(__file__).resolve().parent.parent / "nodes/src"
    graph = edges(root)
    comps = components(graph)
    if not comps:
        print(f"no import cycles between the top-level modules of {root}")
        return 0
    for comp in comps:
        print(f"cycle group ({len(comp)} modules): {', '.join(comp)}")
        for cycle in cycles_in(graph, comp):
            print("  " + " -> ".join(cycle + [cycle[0]]))
            for a, b in zip(cycle, cycle[1:] + [cycle[0]]):
                files = sorted(graph[a][b])
                more = f" (+{len(files) - 3} more)" if len(files) > 3 else ""
                print(f"      {a} -> {b}: {', '.join(files[:3])}{more}")
    return 1 if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
