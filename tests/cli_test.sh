#!/usr/bin/env bash
# Runs the ptl command line as a user would and checks exit statuses and
# output. Usage: cli_test.sh PATH_TO_PTL
set -u
ptl=$1
failures=0
passes=0
out=$(mktemp)
err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT

check() {
	local name=$1 expected_status=$2 pattern=$3 stream=$4
	shift 4
	"$@" >"$out" 2>"$err"
	local status=$?
	local text
	text=$(cat "$stream")
	if [ "$status" -ne "$expected_status" ]; then
		echo "FAIL $name: exit status $status, expected $expected_status"
		sed 's/^/  stderr: /' "$err"
		failures=$((failures + 1))
	elif ! grep -Eq -- "$pattern" <<<"$text"; then
		echo "FAIL $name: output does not match /$pattern/"
		sed 's/^/  output: /' <<<"$text"
		failures=$((failures + 1))
	else
		echo "ok   $name"
		passes=$((passes + 1))
	fi
}

# Bad input: one error line on standard error and exit status 2.
one_error_line() {
	local name=$1
	shift
	"$@" >/dev/null 2>"$err"
	local status=$? lines
	lines=$(wc -l <"$err")
	if [ "$status" -ne 2 ] || [ "$lines" -ne 1 ]; then
		echo "FAIL $name: exit status $status and $lines stderr lines, expected 2 and 1"
		sed 's/^/  stderr: /' "$err"
		failures=$((failures + 1))
	else
		echo "ok   $name: $(cat "$err")"
		passes=$((passes + 1))
	fi
}

check "replay demo child, 2 threads" 0 "verification +0 mismatches" "$out" \
	"$ptl" replay --threads 2 --demo-mib 16 --quiet
# The demo child touches 2304 of its 3072 pages; it also has the pages it
# shares with ptl after fork, so at least 2304 are present.
check "replay demo child pages" 0 "pages +(2[3-9][0-9]{2}|[3-9][0-9]{3}) present" "$out" \
	"$ptl" replay --threads 2 --demo-mib 12 --quiet
check "replay maps every present page" 0 '"pages_present":([0-9]+),.*"pages_mapped":\1[,}]|"pages_mapped":([0-9]+),.*"pages_present":\2[,}]' "$out" \
	"$ptl" replay --threads 2 --demo-mib 12 --json
check "replay json" 0 '"mismatches":0' "$out" "$ptl" replay --demo-mib 8 --json --quiet
check "replay shows progress" 0 "inserting [0-9]+ pages with 1 thread" "$err" "$ptl" replay --demo-mib 8 --progress
check "replay own shell" 0 "verification +0 mismatches" "$out" "$ptl" replay --pid $$ --threads 2 --quiet
check "help names options" 0 "--threads" "$out" "$ptl" replay --help

pid_max=$(cat /proc/sys/kernel/pid_max)
one_error_line "threads 0" "$ptl" replay --threads 0
one_error_line "no such pid" "$ptl" replay --pid "$((pid_max + 1))"
one_error_line "negative pid" "$ptl" replay --pid -5
one_error_line "unknown option" "$ptl" replay --frobnicate
one_error_line "missing value" "$ptl" replay --threads
check "no such pid names it" 2 "no such process: $((pid_max + 1))" "$err" "$ptl" replay --pid "$((pid_max + 1))"
check "threads 0 names the value" 2 "threads.*0" "$err" "$ptl" replay --threads 0

# A process the caller may not read: run ptl as nobody against init.
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null; then
	one_error_line "unreadable process" setpriv --reuid=nobody --regid=nogroup --clear-groups "$ptl" replay --pid 1
else
	echo "skip unreadable process: needs root and setpriv"
fi

echo "$passes passed, $failures failed"
[ "$failures" -eq 0 ]
