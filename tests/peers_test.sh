#!/usr/bin/env bash
# Runs `ptl bench peers` as a user would, on tiny workloads, and checks exit
# statuses, error messages and the shape of its output: the JSON object,
# the CSV rows and the table. It checks no speed; benchmarks are measured,
# not tested.
# Usage: peers_test.sh PATH_TO_PTL [PATH_TO_CMAKE]
set -u
ptl=$1
cmake=${2:-cmake}
here=$(cd "$(dirname "$0")" && pwd)
failures=0
passes=0
out=$(mktemp)
err=$(mktemp)
snapshot=$(mktemp -u --suffix=.ptlsnap)
csv_file=$(mktemp)
trap 'rm -f "$out" "$err" "$snapshot" "$csv_file"' EXIT

# One repeat of 64 pages per run, on 1 and 2 threads.
tiny=(--pages 64 --repeat 1 --threads 1,2)
# 5 peers and 4 lock modes.
structures=9

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

# check_json NAME RESULTS KERNEL SWEEP RATIOS TARGETS
check_json() {
	local name=$1
	if "$cmake" -DJSON_FILE="$out" -DRESULTS="$2" -DKERNEL="$3" -DSWEEP="$4" -DRATIOS="$5" -DTARGETS="$6" \
		-P "$here/peers_json_check.cmake" 2>"$err"; then
		pass "$name"
	else
		fail "$name"
		cat "$err"
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

# Every layout, structure and thread count, and the kernel comparison. Per
# layout and thread count there are 9 structures and 5 ratios. Per thread
# count there are 2 kernel runs and 2 ptl runs per mode. The dense and
# replay layouts have 8 targets each: 3 lookups per thread count, insert at
# 2 threads, and bytes. The kernel adds 2 targets per thread count.
if run_ok "peers json" "$ptl" bench peers "${tiny[@]}" --json --quiet; then
	check_json "peers json shape" $((3 * 2 * structures)) $(((2 + 2 * 4) * 2)) 0 $((3 * 2 * 5)) \
		$((2 * (3 * 2 + 2) + 2 * 2))
	check_output "peers json names the demo child" '"replay_process":"[0-9]+ \(.*a demo child\)"' "$out"
fi

# The size sweep: 2^4, 2^5 and 2^6 pages for every structure.
if run_ok "peers sweep json" "$ptl" bench peers --layouts dense --no-kernel --threads 1 --pages 64 --repeat 1 \
	--sweep 4:6 --json --quiet; then
	check_json "peers sweep json shape" "$structures" 0 $((3 * structures)) 5 4
	check_output "peers sweep starts at 16 pages" '"sweep":\[\{"ns_per_page":\{[^}]*\},"pages":16,' "$out"
fi

if run_ok "peers without ptl" "$ptl" bench peers --modes none --layouts dense --no-kernel --threads 2 --pages 64 \
	--repeat 1 --json --quiet; then
	check_json "peers without ptl has no ratios" 5 0 0 0 0
fi

if run_ok "ptl without peers" "$ptl" bench peers --peers none --modes split,lockless --layouts dense "${tiny[@]}" \
	--json --quiet; then
	check_json "ptl without peers has kernel targets" 4 $(((2 + 2 * 2) * 2)) 0 0 5
fi

# CSV: one measurement per row, with as many fields as the header and
# every value above zero. Per structure, thread count and layout: 5
# operations, the bytes per page and the CPU share.
if run_ok "peers csv" "$ptl" bench peers --layouts dense,scattered --no-kernel "${tiny[@]}" --csv --quiet; then
	check_output "peers csv header" "^section,layout,structure,threads,pages,metric,median,min,max$" "$out"
	# PTL_PEERS_HEAP_UNMEASURED=1: the heap cannot be measured (under
	# AddressSanitizer), so bytes per page may read 0.
	problems=$(awk -F, -v rows=$((2 * 2 * structures * 7)) -v heap_unmeasured="${PTL_PEERS_HEAP_UNMEASURED:-0}" '
		NR == 1 { columns = NF; next }
		NF != columns { print "row " NR " has " NF " fields, the header " columns }
		heap_unmeasured == 1 && $6 == "bytes_per_page" { next }
		!($7 > 0 && $8 > 0 && $9 > 0) { print "row " NR " has a value that is not above 0: " $0 }
		END { if (NR - 1 != rows) print NR - 1 " rows, expected " rows }
	' "$out")
	if [ -n "$problems" ]; then
		fail "peers csv rows"
		sed 's/^/  /' <<<"$problems"
	else
		pass "peers csv rows"
	fi
fi

if run_ok "peers table" "$ptl" bench peers --layouts dense "${tiny[@]}" --quiet --csv-file "$csv_file"; then
	check_output "peers csv file beside the table" "^structure,dense,ptl-split,1,64,bytes_per_page," "$csv_file"
	check_output "peers table has the dense layout" "^dense layout, 64 pages" "$out"
	check_output "peers table lists a peer" "^tbb +2 " "$out"
	check_output "peers table lists a ptl mode" "^ptl-split +1 " "$out"
	check_output "peers table has ratios" "^dense +2 lookup-chase +ptl-" "$out"
	check_output "peers table has the kernel" "^kernel MAP_POPULATE +1 " "$out"
	check_output "peers table has targets" "^  (met|missed) +dense lookup-random at 1 thread" "$out"
fi

if run_ok "peers replays own shell" "$ptl" bench peers --layouts replay --pid $$ --no-kernel "${tiny[@]}" --json \
	--quiet; then
	check_output "peers names the replayed process" "\"replay_process\":\"$$ \\(" "$out"
fi

if run_ok "snapshot of own shell" "$ptl" snapshot --pid $$ -o "$snapshot" --quiet; then
	if run_ok "peers replays a snapshot" "$ptl" bench peers --layouts replay --snapshot "$snapshot" --no-kernel \
		"${tiny[@]}" --json --quiet; then
		check_output "peers names the snapshot" "\"replay_process\":\"snapshot $snapshot of $$ " "$out"
	fi
fi

# Progress goes to standard error only, at most once a second and never in
# the first second. How many lines a run prints depends on the machine's
# speed, so this checks their form, not their number.
if run_ok "peers progress" "$ptl" bench peers --layouts dense "${tiny[@]}" --progress --csv; then
	if grep -qv '^ptl bench peers: ' "$err"; then
		fail "peers progress: a line on standard error is not progress"
		sed 's/^/  stderr: /' "$err"
	else
		pass "peers progress lines are well formed"
	fi
	check_output "peers progress leaves csv intact" "^section,layout,structure," "$out"
fi

if run_ok "peers quiet" "$ptl" bench peers --layouts dense --no-kernel "${tiny[@]}" --quiet; then
	if [ -s "$err" ]; then
		fail "peers quiet: standard error is not empty"
		sed 's/^/  stderr: /' "$err"
	else
		pass "peers quiet prints nothing on standard error"
	fi
fi

if run_ok "peers help" "$ptl" bench peers --help; then
	for option in --layouts --peers --modes --threads --pages --repeat --pid --snapshot --kernel --sweep --seed \
		--json --csv --csv-file --quiet --progress; do
		check_output "peers help lists $option" "^ +$option" "$out"
	done
fi

pid_max=$(cat /proc/sys/kernel/pid_max)
bad_input "threads 0" "thread count 0 is invalid" "$ptl" bench peers --threads 0
bad_input "threads 0 in a list" "thread count 0 is invalid" "$ptl" bench peers --threads 1,0
bad_input "threads above the maximum" "thread count 257 is invalid; use 1 to 256" "$ptl" bench peers --threads 257
bad_input "negative threads" "-1" "$ptl" bench peers --threads -1
bad_input "pages 0" "page count 0 is invalid" "$ptl" bench peers --pages 0
bad_input "pages above the maximum" "page count 2000000000 is invalid" "$ptl" bench peers --pages 2000000000
bad_input "repeat 0" "repeat count 0 is invalid" "$ptl" bench peers --repeat 0
bad_input "unknown layout" "unknown layout 'sparse'" "$ptl" bench peers --layouts dense,sparse
bad_input "unknown peer" "unknown peer 'boost'" "$ptl" bench peers --peers std,boost
bad_input "unknown mode" "unknown lock mode 'rcu'" "$ptl" bench peers --modes split,rcu
bad_input "no structure" "no structure selected" "$ptl" bench peers --peers none --modes none
bad_input "sweep without colon" "sweep '10' is invalid; use FROM:TO" "$ptl" bench peers --sweep 10
bad_input "sweep not numbers" "sweep 'a:b' is invalid" "$ptl" bench peers --sweep a:b
bad_input "sweep without TO" "sweep '10:' is invalid" "$ptl" bench peers --sweep 10:
bad_input "sweep from 0" "sweep 0:5 is invalid" "$ptl" bench peers --sweep 0:5
bad_input "sweep reversed" "sweep 20:10 is invalid" "$ptl" bench peers --sweep 20:10
bad_input "sweep above the maximum" "sweep 5:30 is invalid" "$ptl" bench peers --sweep 5:30
bad_input "scattered larger than memory" "the scattered layout with 1073741824 pages needs [0-9]+ MiB" \
	"$ptl" bench peers --layouts scattered --no-kernel --pages 1073741824
bad_input "kernel larger than memory" "the kernel comparison with 1073741824 pages needs [0-9]+ MiB" \
	"$ptl" bench peers --layouts dense --modes none --pages 1073741824
bad_input "pid and snapshot" "--pid excludes --snapshot" "$ptl" bench peers --pid 1 --snapshot /nonexistent
bad_input "csv file in a missing directory" "cannot open --csv-file /nonexistent/peers.csv for writing" \
	"$ptl" bench peers --csv-file /nonexistent/peers.csv
bad_input "json and csv" "--json excludes --csv" "$ptl" bench peers --json --csv
bad_input "unknown option" "--frobnicate" "$ptl" bench peers --frobnicate
bad_input "no such pid" "no such process: $((pid_max + 1))" \
	"$ptl" bench peers --layouts replay --pid "$((pid_max + 1))" --no-kernel "${tiny[@]}" --quiet
bad_input "missing snapshot" "/nonexistent/peers.ptlsnap" \
	"$ptl" bench peers --layouts replay --snapshot /nonexistent/peers.ptlsnap --no-kernel "${tiny[@]}" --quiet
bad_input "error names the subcommand" "^ptl bench peers: error: " "$ptl" bench peers --repeat 0

echo "$passes passed, $failures failed"
[ "$failures" -eq 0 ]
