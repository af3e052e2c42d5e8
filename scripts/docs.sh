#!/usr/bin/env bash
# Builds the DocC documentation of the public modules into .build/docs (open
# .build/docs/index.html through a web server, or read the Markdown in Sources/*/*.docc).
# Any DocC warning (a link that does not resolve, a symbol that does not exist) fails the
# build, so CI keeps the catalog true to the code. The getting-started article's code is
# Snippets/GettingStarted.swift, which `swift build` compiles (GettingStartedArticleTests).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(swift package dump-symbol-graph --skip-synthesized-members 2>&1) || { echo "$out" >&2; exit 1; }
dir=$(printf '%s\n' "$out" | sed -n 's/^Files written to //p' | tail -1)
graphs=$(mktemp -d)
trap 'rm -rf "$graphs"' EXIT
# The app model: Autonomous and the module it re-exports.
cp "$dir"/Autonomous*.symbols.json "$dir"/ClusterCore*.symbols.json "$graphs"/
rm -f "$graphs"/AutonomousPackage*.symbols.json "$graphs"/AutonomousTesting*.symbols.json
docc convert Sources/Autonomous/Autonomous.docc \
    --additional-symbol-graph-dir "$graphs" \
    --fallback-display-name Autonomous --fallback-bundle-identifier dev.autonomous.Autonomous \
    --warnings-as-errors \
    --output-path .build/docs
echo "docs: .build/docs"
