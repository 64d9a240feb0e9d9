#!/usr/bin/env bash
# Publishing checks: every crate of the workspace packages, and builds from
# its packaged sources alone; the dependency tree passes cargo-deny's
# licences and bans checks (deny.toml). Called by .ci/run; runs on its own
# too. Nothing is published.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/busline-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export CARGO_INCREMENTAL=0

echo "== package (cargo package --workspace, verified)"
# The crates depend on each other at version 0.1.0, which is not on
# crates.io: cargo packages them in dependency order into a temporary
# registry overlay and then builds each .crate against the packaged others,
# so a file missing from a package, or a dependency that only resolves
# through the workspace, fails here.
#
# Between runs the overlay's crates keep their version (0.1.0) while their
# sources change, and cargo trusts a registry crate it has seen once: it
# does not unpack it again (the copy under $CARGO_HOME/registry/src stays)
# and does not rebuild it (registry crates are never checked for changes).
# A crate would then be verified against its dependencies' sources of an
# earlier run. So remove those copies and what was built from them, found
# by the dep-info files that name them; no crates.io package is named
# busline*.
#
# Two runs at once on one machine would delete each other's copies, so runs
# take turns (the lock is held until cargo package is done).
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
mkdir -p "$cargo_home"
exec 9>"$cargo_home/.busline-package.lock"
flock 9
deps_dir="$CARGO_TARGET_DIR/debug/deps"
if [ -d "$deps_dir" ]; then
    { grep -l -s '/registry/src/[^/ ]*/busline' "$deps_dir"/busline*.d || true; } |
        while read -r dep_info; do
            unit=$(basename "$dep_info" .d)
            rm -f "$deps_dir/$unit".* "$deps_dir/lib$unit".*
            rm -rf "$CARGO_TARGET_DIR"/debug/.fingerprint/*-"${unit##*-}"
        done
fi
rm -rf "$cargo_home"/registry/src/*/busline*
# --allow-dirty: a developer's tree has uncommitted work, and the check is
# about what the package would contain, not about git.
# --all-features: every optional module must build from the package too.
# The verify builds share CARGO_TARGET_DIR with clippy and the tests: the
# facade's (all backends) reuses their librdkafka build; busline-kafka's
# own resolves cc without the `parallel` feature that aws-lc-sys adds in the
# whole workspace, so it uses a librdkafka of its own, the one
# `cargo nextest run -p busline-kafka --all-features` builds too (once per
# target directory, about 2 minutes).
cargo package --workspace --all-features --allow-dirty --locked
exec 9>&-

echo "== cargo deny (licenses, bans)"
if ! command -v cargo-deny >/dev/null 2>&1; then
    # Built in a temporary directory of its own, not in the project's.
    (unset CARGO_TARGET_DIR; cargo install cargo-deny --locked)
fi
cargo deny --version
# The advisories check needs the RustSec advisory database, which is
# fetched from outside the package registries; see README.md.
# Duplicate-version warnings print without inclusion graphs; a failure
# prints the check again with them. `--workspace`: every crate of the
# workspace, not only what the facade depends on (busline-outbox went
# unchecked while the facade did not depend on it).
cargo deny --workspace --locked check --hide-inclusion-graph licenses bans ||
    { cargo deny --workspace --locked check licenses bans; exit 1; }
