#!/usr/bin/env bash
# Runs `ptl bench` as a user would, on tiny workloads, and checks exit
# statuses and the shape of its output: the JSON object, the CSV rows and
# the table. It checks no speed; benchmarks are measured, not tested.
# Usage: bench_test.sh PATH_TO_PTL [PATH_TO_CMAKE]
set -u
ptl=$1
cmake=${2:-cmake}
here=$(cd "$(dirname "$0")" && pwd)
failures=0
passes=0
out=$(mktemp)
err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT

# Every run is one repeat of a few hundred pages with 1 and 2 threads.
tiny=(--pages 600 --repeat 1 --threads 1,2)
modes=4
threads=2

pass() {
	echo "ok   $1"
	passes=$((passes + 1))
}

fail() {
	echo "FAIL $1"
	failures=$((failures + 1))
}

# Runs the command and checks its exit status; the output stays in $out
# and $err for the checks that follow.
run_ok() {
	local name=$1
	shift
	"$@" >"$out" 2>"$err"
	local status=$?
	if [ "$status" -ne 0 ]; then
		fail "$name: exit status $status, expected 0"
		sed 's/^/  stderr: /' "$err"
		return 1
	fi
	pass "$name"
}

check_json() {
	local name=$1 results=$2 limits=$3
	if "$cmake" -DJSON_FILE="$out" -DRESULTS="$results" -DLIMITS="$limits" -P "$here/bench_json_check.cmake" 2>"$err"; then
		pass "$name"
	else
		fail "$name"
		cat "$err"
	fi
}

# Each CSV row must have as many fields as the header, and every
# throughput (median, min, max) must be above zero.
check_csv() {
	local name=$1 rows=$2
	local problems
	problems=$(awk -F, -v rows="$rows" '
		NR == 1 { columns = NF; next }
		NF != columns { print "row " NR " has " NF " fields, the header " columns }
		!($6 > 0 && $7 > 0 && $8 > 0) { print "row " NR " has a throughput that is not above 0: " $0 }
		END { if (NR - 1 != rows) print NR - 1 " rows, expected " rows }
	' "$out")
	if [ -n "$problems" ]; then
		fail "$name"
		sed 's/^/  /' <<<"$problems"
	else
		pass "$name"
	fi
}

check_output() {
	local name=$1 pattern=$2 stream=$3
	if grep -Eq -- "$pattern" "$stream"; then
		pass "$name"
	else
		fail "$name: output does not match /$pattern/"
		sed 's/^/  output: /' "$stream"
	fi
}

# Bad input: one error line on standard error, naming the value, and exit
# status 2.
bad_input() {
	local name=$1 pattern=$2
	shift 2
	"$@" >/dev/null 2>"$err"
	local status=$? lines
	lines=$(wc -l <"$err")
	if [ "$status" -ne 2 ] || [ "$lines" -ne 1 ]; then
		fail "$name: exit status $status and $lines stderr lines, expected 2 and 1"
		sed 's/^/  stderr: /' "$err"
	elif ! grep -Eq -- "$pattern" "$err"; then
		fail "$name: message does not match /$pattern/: $(cat "$err")"
	else
		pass "$name: $(cat "$err")"
	fi
}

for scenario in kernel-map fault replay; do
	if run_ok "bench $scenario json" "$ptl" bench --scenarios "$scenario" "${tiny[@]}" --json --quiet; then
		check_json "bench $scenario json shape" $((modes * threads)) "$threads"
	fi
done

if run_ok "bench all scenarios csv" "$ptl" bench "${tiny[@]}" --csv --quiet; then
	# Per scenario and thread count: the store limit and one row per mode.
	check_csv "bench csv rows" $((3 * threads * (modes + 1)))
	check_output "bench csv header" "^scenario,mode,threads,unit," "$out"
fi

if run_ok "bench table" "$ptl" bench --scenarios kernel-map --modes pushdown,legacy "${tiny[@]}" --quiet; then
	check_output "bench table names the limit" "^kernel-map +limit +1 " "$out"
	check_output "bench table names the mode" "^kernel-map +pushdown +2 " "$out"
	check_output "bench table lists locks" "vmalloc area lock" "$out"
fi

# Progress goes to standard error only, at most once a second and never in
# the first second. How many lines a run prints depends on the machine's
# speed, so this checks their form, not their number.
if run_ok "bench progress" "$ptl" bench --scenarios fault "${tiny[@]}" --progress --csv; then
	if grep -qv '^ptl bench: ' "$err"; then
		fail "bench progress: a line on standard error is not progress"
		sed 's/^/  stderr: /' "$err"
	else
		pass "bench progress lines are well formed"
	fi
	check_output "bench progress leaves csv intact" "^scenario,mode,threads,unit," "$out"
fi

if run_ok "bench quiet" "$ptl" bench --scenarios fault "${tiny[@]}" --quiet; then
	if [ -s "$err" ]; then
		fail "bench quiet: standard error is not empty"
		sed 's/^/  stderr: /' "$err"
	else
		pass "bench quiet prints nothing on standard error"
	fi
fi

if run_ok "bench replays own shell" "$ptl" bench --scenarios replay --pid $$ --modes split "${tiny[@]}" --json --quiet; then
	check_output "bench names the replayed process" "\"replay_process\":\"$$ \\(" "$out"
fi

# --arch builds every scenario's tables in the named geometry.
for geometry in i386 i386_pae arm64_4k; do
	if run_ok "bench --arch $geometry" "$ptl" bench --arch "$geometry" --scenarios kernel-map,fault "${tiny[@]}" --json --quiet; then
		check_json "bench --arch $geometry json shape" $((2 * modes * threads)) $((2 * threads))
		check_output "bench --arch $geometry names it" "\"arch\":\"$geometry\"" "$out"
	fi
done
if run_ok "bench --arch arm64_4k replays own shell" "$ptl" bench --arch arm64_4k --scenarios replay --pid $$ --modes split "${tiny[@]}" --json --quiet; then
	check_output "bench --arch arm64_4k replay names it" '"arch":"arm64_4k"' "$out"
fi

if run_ok "bench help" "$ptl" bench --help; then
	for option in --scenarios --modes --threads --pages --repeat --pid --batch --window --arch --json --csv --quiet --progress; do
		check_output "bench help lists $option" "^ +$option " "$out"
	done
fi

pid_max=$(cat /proc/sys/kernel/pid_max)
bad_input "threads 0" "thread count 0" "$ptl" bench --threads 0
bad_input "threads 0 in a list" "thread count 0" "$ptl" bench --threads 1,0
bad_input "pages 0" "page count 0" "$ptl" bench --pages 0
bad_input "repeat 0" "repeat count 0" "$ptl" bench --repeat 0
bad_input "pages above the maximum" "page count 2000000000" "$ptl" bench --pages 2000000000
bad_input "fault larger than memory" "needs [0-9]+ MiB of memory" "$ptl" bench --scenarios fault --pages 1073741824
bad_input "kernel-map window too large" "needs [0-9]+ pages of vmalloc area" \
	"$ptl" bench --scenarios kernel-map --window 65536 --batch 65536 --threads 1024
bad_input "unknown scenario" "unknown scenario 'mapping'" "$ptl" bench --scenarios kernel-map,mapping
bad_input "unknown mode" "unknown lock mode 'rcu'" "$ptl" bench --modes pushdown,rcu
bad_input "negative threads" "-1" "$ptl" bench --threads -1
bad_input "json and csv" "--json excludes --csv" "$ptl" bench --json --csv
bad_input "unknown option" "--frobnicate" "$ptl" bench --frobnicate
bad_input "unknown arch" "unknown geometry 'sparc'; choose from x86_64, x86_64_la57, i386, i386_pae, arm64_4k" \
	"$ptl" bench --arch sparc
bad_input "fault larger than the i386 user half" "area of 800000 pages does not fit the 786416 pages of the i386 user half" \
	"$ptl" bench --arch i386 --scenarios fault --pages 800000
bad_input "replay into i386" "ends above the i386 user half \(0xc0000000\)" \
	"$ptl" bench --arch i386 --scenarios replay --pid $$ --pages 16 --repeat 1 --quiet
bad_input "no such pid" "no such process: $((pid_max + 1))" \
	"$ptl" bench --scenarios replay --pid "$((pid_max + 1))" --pages 16 --repeat 1 --quiet

echo "$passes passed, $failures failed"
[ "$failures" -eq 0 ]
