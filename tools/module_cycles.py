#!/usr/bin/env python3
"""Lists pairs of src/ modules that import each other (directly), resolving `pub use`
re-exports in mod.rs files to the module that defines the name. Exit 1 if any pair exists.

Usage: python3 tools/module_cycles.py [SRC_DIR]
"""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
mods = {}  # module path tuple -> file
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs"):
            continue
        rel = os.path.relpath(os.path.join(root, f), src)[:-3].split(os.sep)
        if rel[-1] in ("mod", "lib", "main"):
            rel = rel[:-1]
        mods[tuple(rel)] = os.path.join(root, f)

def reexports(mod):
    """name -> submodule path for `pub use sub::{A, B}` lines of a module file."""
    out = {}
    text = open(mods[mod]).read()
    for m in re.finditer(r"pub use (?:self::)?(\w+)::\{?([^;]+?)\}?;", text):
        for name in re.split(r"[,\s]+", m.group(2)):
            name = name.split(" as ")[-1].strip()
            if name and (*mod, m.group(1)) in mods:
                out[name] = (*mod, m.group(1))
    return out

def resolve(path):
    """The defining module of a `crate::a::b::C` path."""
    parts = [p for p in path.split("::") if p and p != "crate"]
    best = ()
    for i in range(len(parts), 0, -1):
        if tuple(parts[:i]) in mods:
            best = tuple(parts[:i])
            rest = parts[i:]
            break
    else:
        return None
    while rest and rest[0] in reexports(best) and reexports(best)[rest[0]] != best:
        best = reexports(best)[rest[0]]
        rest = rest[1:]
    return best

edges = {}
for mod, file in mods.items():
    text = open(file).read()
    text = re.sub(r"#\[cfg\(test\)\]\s*mod tests \{.*", "", text, flags=re.S)
    targets = set()
    for m in re.finditer(r"use (crate|super)::(\{[^;]*\}|[\w:]+)", text):
        base = () if m.group(1) == "crate" else mod[:-1] if os.path.basename(file) != "mod.rs" else mod[:-1]
        body = m.group(2)
        names = re.findall(r"[\w:]+", body)
        prefix = body.split("{")[0].rstrip(":") if "{" in body else ""
        for n in names if "{" in body else [body]:
            full = "::".join([*base, *(prefix.split("::") if prefix else []), n]) if "{" in body else "::".join([*base, n])
            r = resolve(full)
            if r is not None and r != mod and r != ():
                targets.add(r)
    for m in re.finditer(r"crate::((?:\w+::)+\w+)", text):
        r = resolve(m.group(1))
        if r is not None and r != mod and r != ():
            targets.add(r)
    edges[mod] = targets

pairs = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if a in edges.get(b, ())})
for a, b in pairs:
    print(f"{'::'.join(a)} <-> {'::'.join(b)}")
print(f"{len(pairs)} mutual import(s) among {len(mods)} modules")
sys.exit(1 if pairs else 0)
