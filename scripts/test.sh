#!/usr/bin/env bash
# Builds and runs the whole test suite: the debug build with test hooks
# (which also runs the deliberately broken variants and the negative-compile
# tests), then the same tests under AddressSanitizer with
# UndefinedBehaviorSanitizer, under ThreadSanitizer, and built by Clang with
# -Werror=thread-safety; then each libFuzzer target for 20 seconds. Prints
# each part's duration.
#
# Usage: scripts/test.sh [PRESET...]   (default: debug asan tsan clang fuzz)
set -euo pipefail
cd "$(dirname "$0")/.."

presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(debug asan tsan clang fuzz)
jobs=$(nproc)

part() {
	local name=$1
	shift
	local start=$SECONDS
	echo "==> $name"
	"$@"
	echo "==> $name took $((SECONDS - start)) s"
}

configure() {
	cmake --preset "$1" >/dev/null
}

for preset in "${presets[@]}"; do
	part "configure $preset" configure "$preset"
	part "build $preset" cmake --build --preset "$preset" -j "$jobs"
	part "test $preset" ctest --preset "$preset" -j "$jobs"
done
