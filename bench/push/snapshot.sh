#!/usr/bin/env bash
# bench/push/snapshot.sh [DIR]  -- compile the current src/ into a private copy
# of canopy for benchmarking, so that a rebuild of the project's dist/ by
# someone else in the middle of a benchmark run (tsc rewrites dist/ file by
# file) cannot break or change the canopy under test.
#
# DIR (default /tmp/canopy-pushbench-snap) gets dist/ (tsc --outDir), a copy
# of package.json and a symlink to the project's node_modules. Prints, on
# stdout, the CLI path to use as CANOPY_MAIN; on stderr, a code hash (SHA-256
# over dist/src/**/*.js, first 12 hex digits) to quote with the results.
# Remove DIR when done (rm -rf).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT=$(cd "$HERE/../.." && pwd)
DIR=${1:-/tmp/canopy-pushbench-snap}
case $DIR in /tmp/*) ;; *) echo "snapshot.sh: DIR must be under /tmp" >&2; exit 2 ;; esac
rm -rf "$DIR"
mkdir -p "$DIR"
(cd "$PROJECT" && ./node_modules/.bin/tsc -p tsconfig.build.json --outDir "$DIR/dist") >&2
cp "$PROJECT/package.json" "$DIR/package.json"
ln -s "$PROJECT/node_modules" "$DIR/node_modules"
node "$DIR/dist/src/cli/main.js" --version >/dev/null
hash=$(cd "$DIR/dist/src" && find . -name '*.js' -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-12)
echo "snapshot.sh: $DIR (code hash $hash)" >&2
echo "$hash" >"$DIR/code_hash"
echo "$DIR/dist/src/cli/main.js"
