#!/usr/bin/env bash
# Runs the ptl command line as a user would and checks exit statuses and
# output. Usage: cli_test.sh PATH_TO_PTL
set -u
ptl=$1
data=$(cd "$(dirname "$0")" && pwd)/data
failures=0
passes=0
out=$(mktemp)
err=$(mktemp)
scratch=$(mktemp -d)
trap 'rm -f "$out" "$err"; rm -rf "$scratch"' EXIT

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

# --arch: the geometries whose user half contains an x86-64 process rebuild
# and verify it. i386 and i386 PAE, whose user half ends at 3 GiB, reject it
# and name the first VMA that does not fit.
for geometry in x86_64 x86_64_la57 arm64_4k; do
	check "replay --arch $geometry verifies" 0 "\"arch\":\"$geometry\".*\"mismatches\":0," "$out" \
		"$ptl" replay --arch "$geometry" --threads 2 --demo-mib 4 --json --quiet
done
for geometry in i386 i386_pae; do
	check "replay --arch $geometry rejects x86-64 addresses" 2 \
		"VMA 0x[0-9a-f]+-0x[0-9a-f]+ ends above the $geometry user half \(0xc0000000\).*hold it: x86_64, x86_64_la57, arm64_4k" \
		"$err" "$ptl" replay --arch "$geometry" --demo-mib 1 --quiet
	one_error_line "replay --arch $geometry" "$ptl" replay --arch "$geometry" --demo-mib 1 --quiet
done
check "replay unknown arch lists the geometries" 2 \
	"unknown geometry 'sparc'; choose from x86_64, x86_64_la57, i386, i386_pae, arm64_4k" "$err" \
	"$ptl" replay --arch sparc
one_error_line "replay unknown arch" "$ptl" replay --arch sparc

fail() {
	echo "FAIL $1"
	failures=$((failures + 1))
}

pass() {
	echo "ok   $1"
	passes=$((passes + 1))
}

# Prints each option of a subcommand's --help as one line: the option
# column and its description joined.
help_entries() {
	"$ptl" "$1" --help | awk '
		/^  -/ { if (entry != "") print entry; entry = $0; next }
		/^      / && entry != "" { entry = entry " " $0; next }
		{ if (entry != "") print entry; entry = "" }
		END { if (entry != "") print entry }'
}

# Every option that takes a value states its default (or that it is
# required); in the subcommands listed in $2 every flag does too.
help_states_defaults() {
	local sub=$1 flags_too=$2 missing
	missing=$(help_entries "$sub" | grep -v -- '--help' |
		if [ "$flags_too" = yes ]; then cat; else grep -E '^ +[-a-z,]+ +(TEXT|INT|UINT|FLOAT)'; fi |
		grep -Eiv 'default|required|without it' || true)
	if [ -n "$missing" ]; then
		fail "$sub --help states every default; missing in:"
		sed 's/^/  /' <<<"$missing"
	else
		pass "$sub --help states every default"
	fi
}

# Snapshots: save, replay, and the stored snapshots of real processes.
snap=$scratch/demo.ptlsnap
check "snapshot demo child" 0 "saved process [0-9]+ \\(ptl\\): [0-9]+ VMAs, [0-9]+ present pages" "$out" \
	"$ptl" snapshot --demo-mib 4 -o "$snap" --quiet
check "snapshot file starts with magic" 0 "^PTLSNAP" "$out" head -c 7 "$snap"
check "replay snapshot says its source" 0 "from snapshot $snap taken [0-9-]+ [0-9:]+ UTC on Linux" "$out" \
	"$ptl" replay "$snap" --quiet
check "replay snapshot verifies" 0 "verification +0 mismatches" "$out" "$ptl" replay "$snap" --threads 2 --quiet
check "replay snapshot json" 0 '"source":"snapshot"' "$out" "$ptl" replay "$snap" --json
check "replay live json source" 0 '"source":"process"' "$out" "$ptl" replay --demo-mib 1 --json --quiet
check "replay snapshot --arch arm64_4k" 0 '"arch":"arm64_4k".*"mismatches":0,' "$out" \
	"$ptl" replay "$snap" --arch arm64_4k --json
check "replay snapshot --arch i386 names the file" 2 "$snap: VMA 0x[0-9a-f]+-0x[0-9a-f]+ ends above the i386 user half" \
	"$err" "$ptl" replay "$snap" --arch i386

# The snapshot of a stopped shell and its replay report the same page count.
"$ptl" snapshot --pid $$ --stop -o "$scratch/shell.ptlsnap" >"$out" 2>"$err"
saved=$(grep -Eo '[0-9]+ present pages' "$out" | grep -Eo '^[0-9]+')
replayed=$("$ptl" replay "$scratch/shell.ptlsnap" --json | grep -Eo '"pages_present":[0-9]+' | grep -Eo '[0-9]+$')
if [ -n "$saved" ] && [ "$saved" = "$replayed" ]; then
	pass "shell snapshot round trip: $saved pages"
else
	fail "shell snapshot round trip: saved '$saved' pages, replayed '$replayed'"
	sed 's/^/  stderr: /' "$err"
fi

for stored in "$data"/snapshots/*.ptlsnap; do
	check "replay stored $(basename "$stored")" 0 "verification +(0 mismatches|presence only.* 0 pages missing)" \
		"$out" "$ptl" replay "$stored" --threads 2 --quiet
done
check "presence-only snapshot says so" 0 "presence only: the snapshot holds no PFNs" "$out" \
	"$ptl" replay "$data/snapshots/demo-1mib-presence.ptlsnap"

# Progress goes to standard error on a terminal, and not elsewhere.
if command -v script >/dev/null; then
	check "snapshot progress on a terminal" 0 "ptl snapshot: reading /proc/[0-9]+/maps" "$out" \
		script -qec "'$ptl' snapshot --demo-mib 1 -o '$scratch/tty.ptlsnap'" /dev/null
	check "replay progress on a terminal" 0 "ptl replay: loading snapshot" "$out" \
		script -qec "'$ptl' replay '$snap'" /dev/null
else
	echo "skip progress on a terminal: needs script(1)"
fi
"$ptl" snapshot --demo-mib 1 -o "$scratch/quiet.ptlsnap" >/dev/null 2>"$err"
if [ -s "$err" ]; then
	fail "no progress when standard error is not a terminal"
	sed 's/^/  stderr: /' "$err"
else
	pass "no progress when standard error is not a terminal"
fi

# Help: every subcommand states each option's unit and default.
for sub in replay snapshot bench; do
	check "$sub help" 0 "Usage: .*$sub" "$out" "$ptl" "$sub" --help
done
help_states_defaults replay yes
help_states_defaults snapshot yes
help_states_defaults bench no

# Bad input to snapshot and to replay of a file: one line, exit status 2.
printf 'not a snapshot\n' >"$scratch/text"
cp "$snap" "$scratch/corrupt.ptlsnap"
printf '\377' | dd of="$scratch/corrupt.ptlsnap" bs=1 seek=40 conv=notrunc status=none
head -c 100 "$snap" >"$scratch/truncated.ptlsnap"
one_error_line "snapshot without output" "$ptl" snapshot --demo-mib 1
one_error_line "snapshot unknown option" "$ptl" snapshot -o "$scratch/x" --frobnicate
one_error_line "snapshot missing value" "$ptl" snapshot -o "$scratch/x" --pid
one_error_line "snapshot pid 0" "$ptl" snapshot -o "$scratch/x" --pid 0
one_error_line "snapshot demo-mib 0" "$ptl" snapshot -o "$scratch/x" --demo-mib 0
one_error_line "snapshot no such pid" "$ptl" snapshot -o "$scratch/x" --pid "$((pid_max + 1))"
one_error_line "snapshot unwritable output" "$ptl" snapshot --demo-mib 1 -o "$scratch/missing/x.ptlsnap"
if [ "$(cat /proc/2/comm 2>/dev/null)" = kthreadd ]; then
	one_error_line "snapshot kernel thread" "$ptl" snapshot -o "$scratch/x" --pid 2
else
	echo "skip snapshot kernel thread: PID 2 is not kthreadd here"
fi
one_error_line "replay missing file" "$ptl" replay "$scratch/missing.ptlsnap"
one_error_line "replay directory" "$ptl" replay "$scratch"
one_error_line "replay text file" "$ptl" replay "$scratch/text"
one_error_line "replay corrupt file" "$ptl" replay "$scratch/corrupt.ptlsnap"
one_error_line "replay truncated file" "$ptl" replay "$scratch/truncated.ptlsnap"
one_error_line "replay file and pid" "$ptl" replay "$snap" --pid $$
one_error_line "replay two files" "$ptl" replay "$snap" "$snap"
one_error_line "replay threads out of range" "$ptl" replay --threads 5000
one_error_line "unknown subcommand" "$ptl" frobnicate
one_error_line "no subcommand" "$ptl"
one_error_line "bench unknown option" "$ptl" bench --frobnicate
one_error_line "bench unknown mode" "$ptl" bench --modes nosuch
check "missing file names it and the fix" 2 "missing.ptlsnap: cannot open: .*check the path" "$err" \
	"$ptl" replay "$scratch/missing.ptlsnap"
check "corrupt file names the checksum" 2 "corrupt.ptlsnap:offset [0-9]+: checksum mismatch" "$err" \
	"$ptl" replay "$scratch/corrupt.ptlsnap"
check "truncated file names the offset" 2 "truncated.ptlsnap:offset 12: .*truncated" "$err" \
	"$ptl" replay "$scratch/truncated.ptlsnap"
check "unwritable output names the fix" 2 "cannot create: .*check that the directory exists" "$err" \
	"$ptl" snapshot --demo-mib 1 -o "$scratch/missing/x.ptlsnap"
check "unknown subcommand names it" 2 "unknown subcommand 'frobnicate'" "$err" "$ptl" frobnicate

# A process the caller may not read: run ptl as nobody against init.
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null; then
	one_error_line "unreadable process" setpriv --reuid=nobody --regid=nogroup --clear-groups "$ptl" replay --pid 1
	one_error_line "snapshot unreadable process" setpriv --reuid=nobody --regid=nogroup --clear-groups \
		"$ptl" snapshot --pid 1 -o /tmp/ptl-cli-test-unused.ptlsnap
	one_error_line "unreadable snapshot" setpriv --reuid=nobody --regid=nogroup --clear-groups \
		"$ptl" replay "$snap"
else
	echo "skip unreadable process and file: needs root and setpriv"
fi

# ptl check --kvm: exit 0 when the guest agreed, 3 when KVM is not usable.
if [ -e /dev/kvm ]; then
	check "check kvm" 0 "addresses +[0-9]+ verified, 0 mismatches" "$out" "$ptl" check --kvm --pages 1000 --threads 2
else
	check "check kvm skipped" 3 "skipped" "$out" "$ptl" check --kvm --pages 1000
fi
check "check kvm missing device" 3 "skipped: /nonexistent" "$out" "$ptl" check --kvm --device /nonexistent
one_error_line "check without --kvm" "$ptl" check
one_error_line "check unknown mode" "$ptl" check --kvm --modes foo
one_error_line "check pages out of range" "$ptl" check --kvm --pages 0

echo "$passes passed, $failures failed"
[ "$failures" -eq 0 ]
