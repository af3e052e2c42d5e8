#!/usr/bin/env python3
"""Renders the public API of the package's modules as text, one declaration a line.

usage: public-api.py SYMBOLGRAPH_DIR OUT_DIR [--check]

Reads the symbol graphs `swift package dump-symbol-graph` writes (public symbols only) and
writes OUT_DIR/<Module>.txt for every module that has a public symbol. With --check it
writes nothing and exits 1, printing a diff, when the listing differs from OUT_DIR.
"""
import difflib, glob, json, os, sys

SKIP = ("PackageTests", "PackageDiscoveredTests")


def render(paths):
    lines, names = [], {}
    graphs = [json.load(open(p)) for p in paths]
    for g in graphs:
        for s in g["symbols"]:
            names[s["identifier"]["precise"]] = ".".join(s["pathComponents"])
    for g in graphs:
        for s in g["symbols"]:
            owner = ".".join(s["pathComponents"][:-1])
            decl = "".join(f["spelling"] for f in s.get("declarationFragments", []))
            decl = " ".join(decl.split())
            lines.append(f"{owner}: {decl}" if owner else decl)
        for r in g["relationships"]:
            if r["kind"] not in ("conformsTo", "inheritsFrom"):
                continue
            source = names.get(r["source"])
            if source is None:
                continue
            target = names.get(r["target"]) or r.get("targetFallback") or r["target"]
            lines.append(f"{source} {r['kind']} {target}")
    return "".join(line + "\n" for line in sorted(lines))


def main():
    source, out = sys.argv[1], sys.argv[2]
    check = "--check" in sys.argv[3:]
    listing = {}
    for path in sorted(glob.glob(os.path.join(source, "*.symbols.json"))):
        module = os.path.basename(path).split(".symbols.json")[0].split("@")[0]
        if module.endswith(SKIP):
            continue
        listing.setdefault(module, []).append(path)
    rendered = {m: render(p) for m, p in listing.items()}
    rendered = {m: text for m, text in rendered.items() if text}
    if not check:
        os.makedirs(out, exist_ok=True)
        for old in glob.glob(os.path.join(out, "*.txt")):
            os.remove(old)
        for module, text in rendered.items():
            with open(os.path.join(out, module + ".txt"), "w") as f:
                f.write(text)
        return 0
    failed = False
    committed = {os.path.basename(p)[:-4]: open(p).read() for p in glob.glob(os.path.join(out, "*.txt"))}
    for module in sorted(set(rendered) | set(committed)):
        new, old = rendered.get(module, ""), committed.get(module, "")
        if new != old:
            failed = True
            sys.stdout.writelines(difflib.unified_diff(
                old.splitlines(True), new.splitlines(True), f"{out}/{module}.txt (committed)", f"{module} (built)"))
    if failed:
        print("\nThe public API changed. If that is intended, run scripts/public-api.sh and commit api/.")
        return 1
    print(f"public API unchanged: {', '.join(sorted(rendered))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
