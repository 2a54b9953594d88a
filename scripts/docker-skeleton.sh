#!/bin/sh
# Writes a dependency-only skeleton of the crate into OUT_DIR, for the Dockerfile's cached
# dependency layer: Cargo.toml and Cargo.lock as they are, src/lib.rs empty, and every other
# target file replaced by `fn main() {}`.
#
# Every target Cargo.toml declares (or discovers) still exists, so cargo accepts the
# manifest, and building `--example worker` in the skeleton compiles every dependency and
# dev-dependency and nothing of the crate. The skeleton's bytes change only when the
# manifests change or .rs files are added or removed, so edits to the code keep the
# dependency layer cached.
#
# Usage (from the crate root): sh scripts/docker-skeleton.sh OUT_DIR
set -eu

out=${1:?usage: docker-skeleton.sh OUT_DIR}
mkdir -p "$out"
cp Cargo.lock "$out/"
# A build script runs for real: what it generates can matter to the dependency build.
if [ -f build.rs ]; then cp build.rs "$out/"; fi

stub() {
    mkdir -p "$out/$(dirname "$1")"
    case "$1" in
        src/lib.rs | */src/lib.rs) : >"$out/$1" ;;
        *) echo 'fn main() {}' >"$out/$1" ;;
    esac
}

# The root package and every workspace member (a directory with its own Cargo.toml that the
# root manifest lists in `members`).
members=$(sed -n '/^\[workspace\]/,/^\[/s/^members[[:space:]]*=[[:space:]]*\[\(.*\)\].*/\1/p' Cargo.toml \
    | tr ',' '\n' | sed 's/[[:space:]"]//g' | grep -v '^\.\?$' || true)
for pkg in . $members; do
    mkdir -p "$out/$pkg"
    cp "$pkg/Cargo.toml" "$out/$pkg/Cargo.toml"
    # Target roots under src/ (modules are not needed: the stub library declares none),
    # every file under examples/, benches/ and tests/ (auto-discovered targets), and any .rs
    # file Cargo.toml names with `path = "..."`.
    {
        for file in src/lib.rs src/main.rs; do
            if [ -f "$pkg/$file" ]; then echo "$file"; fi
        done
        for dir in src/bin examples benches tests; do
            if [ -d "$pkg/$dir" ]; then (cd "$pkg" && find "$dir" -type f -name '*.rs'); fi
        done
        sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*/\1/p' "$pkg/Cargo.toml"
    } | sed 's|^\./||' | LC_ALL=C sort -u | while IFS= read -r file; do
        if [ -f "$pkg/$file" ]; then stub "$(echo "$pkg/$file" | sed 's|^\./||')"; fi
    done
done
