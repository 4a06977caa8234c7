#!/usr/bin/env bash
# Negative-compile test: FILE must build as it is and must fail to build
# with PTL_BREAK defined, with a diagnostic that matches PATTERN (so that an
# unrelated error cannot pass for the expected one).
# Usage: compile_fail.sh CLANGXX INCLUDE_DIR FILE PATTERN
set -u
cxx=$1 include=$2 file=$3 pattern=$4
flags=(-std=c++20 -fsyntax-only -I"$include" -DPTL_ARCH_X86_64=1 -Wthread-safety -Werror=thread-safety)

if ! "$cxx" "${flags[@]}" "$file"; then
	echo "FAIL: $file does not build even without PTL_BREAK"
	exit 1
fi

output=$("$cxx" "${flags[@]}" -DPTL_BREAK "$file" 2>&1)
status=$?
if [ "$status" -eq 0 ]; then
	echo "FAIL: $file builds with PTL_BREAK; the mistake was not caught"
	exit 1
fi
if ! grep -Eq -- "$pattern" <<<"$output"; then
	echo "FAIL: $file failed to build, but not with /$pattern/:"
	echo "$output"
	exit 1
fi
echo "ok: $file is rejected: $(grep -Em1 -- "$pattern" <<<"$output")"
