#!/usr/bin/env python3
"""Checks that src/ keeps its layout (STYLE.md, README "Layout"):

1. no module is longer than MAX_LINES lines, test modules included;
2. no import cycle between modules;
3. no layer imports a layer above it, in the order of LAYERS.

A module's imports are the `crate::` and `super::` paths in its code outside `#[cfg(test)]`
modules and comments, resolved to the longest module path that exists; `pub use` re-exports and
`mod` declarations are structure, not imports. Exits 1 and prints every finding otherwise.
Usage: layout.py [SRC_DIR] (default: src next to this script's parent)."""
import os
import re
import sys

MAX_LINES = 800
# Lowest first. A module may import its own layer and the layers before it. The crate root
# (lib.rs) and the binary (main.rs, demo.rs) sit above all of them.
LAYERS = ["sync", "config", "telemetry", "error", "admission", "http", "upstream", "proxy",
          "listener", "ops", "server"]
BINARY = {"main", "demo"}


def modules(src):
    """Module path (tuple) -> file, for the library crate."""
    out = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            parts = os.path.relpath(path, src)[:-3].split(os.sep)
            if parts[0] in BINARY or parts[0] == "bin":
                continue
            if parts[-1] in ("mod", "lib"):
                parts = parts[:-1]
            out[tuple(parts)] = path
    return out


def code_lines(text):
    """The text's lines outside `#[cfg(test)] mod ... { }` blocks, without comments."""
    text = re.sub(r"//[^\n]*", "", text)
    out, skip, depth = [], False, 0
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if not skip and line.strip() == "#[cfg(test)]" and i + 1 < len(lines) \
                and re.match(r"\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", lines[i + 1]):
            skip, depth = True, 0
            i += 1
            continue
        if skip:
            depth += line.count("{") - line.count("}")
            if depth <= 0 and "}" in line:
                skip = False
            i += 1
            continue
        out.append(line)
        i += 1
    return out


def expand(path):
    """`a::{b, c::d}` -> ["a::b", "a::c::d"] (one level of braces is all weir uses)."""
    m = re.match(r"((?:\w+::)*)\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [m.group(1) + p.strip().split(" as ")[0] for p in m.group(2).split(",") if p.strip()]


def imports(mod, file, mods):
    here = list(mod)
    is_dir = os.path.basename(file) in ("mod.rs", "lib.rs")
    found = set()
    for line in code_lines(open(file).read()):
        s = line.strip()
        if re.match(r"(pub(\([^)]*\))?\s+)use\s", s) or re.match(r"(pub(\([^)]*\))?\s+)?mod\s", s):
            continue
        for m in re.finditer(r"\b(crate|(?:super::)+)(?:::)?((?:\w+::)*(?:\w+|\{[^{}]*\}))", s):
            for p in expand(m.group(2)):
                names = [n for n in p.split("::") if n]
                if m.group(1) == "crate":
                    base = []
                else:
                    ups = m.group(1).count("super")
                    base = here if is_dir else here[:-1]
                    base = base[:len(base) - (ups - 1)] if ups > 1 else base
                target = resolve(base + names, mods)
                if target is not None and target != mod and target != ():
                    found.add(target)
    return found


def resolve(parts, mods):
    for i in range(len(parts), 0, -1):
        if tuple(parts[:i]) in mods:
            return tuple(parts[:i])
    return None


def cycles(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def layer(mod):
    return LAYERS.index(mod[0]) if mod and mod[0] in LAYERS else None


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "src")
    mods = modules(src)
    problems = []
    for mod, file in sorted(mods.items()):
        n = sum(1 for _ in open(file))
        if n > MAX_LINES:
            problems.append(f"{os.path.relpath(file, src)}: {n} lines (more than {MAX_LINES}): split it")
        if mod and mod[0] not in LAYERS:
            problems.append(f"{os.path.relpath(file, src)}: top-level module {mod[0]!r} is in no layer (.ci/layout.py LAYERS)")
    graph = {m: imports(m, f, mods) for m, f in mods.items()}
    for group in cycles(graph):
        problems.append("import cycle: " + " <-> ".join("::".join(m) or "crate" for m in group))
    for mod, targets in sorted(graph.items()):
        for t in sorted(targets):
            a, b = layer(mod), layer(t)
            if a is not None and b is not None and b > a:
                problems.append(f"{'::'.join(mod)} imports {'::'.join(t)}: a higher layer "
                                f"({LAYERS[b]} is above {LAYERS[a]})")
    order = " < ".join(LAYERS)
    if problems:
        print("layout check failed:")
        for p in problems:
            print("  " + p)
        sys.exit(1)
    sizes = sorted(sum(1 for _ in open(f)) for f in mods.values())
    print(f"layout ok: {len(mods)} modules, largest {sizes[-1]} lines, no cycle, layers {order}")


if __name__ == "__main__":
    main()
