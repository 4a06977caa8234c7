#!/usr/bin/env bash
# Runs every broken variant of the engine against the tests built with it
# and checks that each variant is caught: at least one of its test
# executables fails. Prints, per mutant, the tests that failed, then
# "caught N of M mutants", and exits non-zero unless every mutant is caught.
#
# Usage: run_mutants.sh NAME=EXECUTABLE[,EXECUTABLE...] ...
# Each EXECUTABLE is a GoogleTest program built with the mutant's macro.
set -u

# A run longer than this counts as hung. The explorer itself reports a
# deadlock long before that.
per_run_timeout=300

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# The tests a finished run reported as failed, comma separated.
failed_tests() {
	sed -nE 's/^\[  FAILED  \] ([A-Za-z_][A-Za-z0-9_./]*).*/\1/p' "$log" | sort -u | paste -sd, - | sed 's/,/, /g'
}

# The test that was running when the program stopped without a report.
last_started_test() {
	sed -nE 's/^\[ RUN      \] (.*)/\1/p' "$log" | tail -n 1
}

# Runs one executable and prints what caught the mutant there, if anything.
# Returns 0 when it caught the mutant.
run_one() {
	local exe=$1 status tests

	# The braces keep bash's own report of a child killed by a signal out
	# of the output, because the exit status reports the same.
	{ timeout "$per_run_timeout" "$exe" >"$log" 2>&1; } 2>/dev/null
	status=$?
	if [ "$status" -eq 0 ]; then
		echo "    $(basename "$exe"): every test passed"
		return 1
	fi

	# GoogleTest exits with 1 when tests failed. Any other status means
	# the program stopped early (an assertion, a crash, the timeout), and
	# the test that was running then caught the mutant too.
	tests=$(failed_tests)
	if [ "$status" -eq 124 ]; then
		tests+="${tests:+, }hung for ${per_run_timeout} s in $(last_started_test)"
	elif [ "$status" -ne 1 ] || [ -z "$tests" ]; then
		tests+="${tests:+, }stopped with exit status $status in $(last_started_test)"
	fi
	echo "    $(basename "$exe"): $tests"
	return 0
}

caught=0
total=0
missed=()

for spec in "$@"; do
	name=${spec%%=*}
	IFS=, read -r -a executables <<<"${spec#*=}"
	total=$((total + 1))

	echo "mutant $name:"
	hit=0
	for exe in "${executables[@]}"; do
		if run_one "$exe"; then
			hit=1
		fi
	done

	if [ "$hit" -eq 1 ]; then
		caught=$((caught + 1))
		echo "  caught"
	else
		missed+=("$name")
		echo "  NOT CAUGHT"
	fi
done

echo "caught $caught of $total mutants"
if [ "$caught" -ne "$total" ]; then
	echo "not caught: ${missed[*]}"
	exit 1
fi
