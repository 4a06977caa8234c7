#!/usr/bin/env bash
# Plots the CSV that `ptl bench --csv` prints as an SVG: median throughput
# against thread count, one panel per scenario and one line per lock mode,
# with the min-max range of the repeats as error bars. The store limit is
# left out because it is one to two orders of magnitude above the modes.
#
# Usage: scripts/plot-bench.sh BENCH.csv OUT.svg
# Needs gnuplot (Debian package gnuplot-nox).
set -euo pipefail

if [ $# -ne 2 ]; then
	echo "usage: $0 BENCH.csv OUT.svg" >&2
	exit 2
fi
csv=$1
svg=$2

if [ ! -r "$csv" ]; then
	echo "plot-bench: cannot read $csv" >&2
	exit 2
fi
if ! head -n 1 "$csv" | grep -q '^scenario,mode,threads,unit,units_per_run,median_per_second,min_per_second,max_per_second,'; then
	echo "plot-bench: $csv does not start with the header of ptl bench --csv" >&2
	exit 2
fi
if ! command -v gnuplot >/dev/null; then
	echo "plot-bench: gnuplot not found; install the gnuplot-nox package" >&2
	exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Columns: 1 scenario, 2 mode, 3 threads, 4 unit, 6 median, 7 min, 8 max.
scenarios=$(awk -F, 'NR > 1 && !seen[$1]++ { print $1 }' "$csv")
modes=$(awk -F, 'NR > 1 && $2 != "limit" && !seen[$2]++ { print $2 }' "$csv")
thread_counts=$(awk -F, 'NR > 1 { print $3 }' "$csv" | sort -n | uniq | paste -sd, -)
nr_scenarios=$(wc -w <<<"$scenarios")

# One data file per scenario and mode, sorted by thread count, in millions
# per second. Each mode is drawn a little left or right of its thread count
# so that the error bars of the modes do not hide each other.
for s in $scenarios; do
	index=0
	for m in $modes; do
		awk -F, -v s="$s" -v m="$m" -v shift="$index" \
			'$1 == s && $2 == m { print $3 * (1 + (shift - 1.5) * 0.03), $6 / 1e6, $7 / 1e6, $8 / 1e6 }' "$csv" |
			sort -n >"$work/$s.$m.dat"
		index=$((index + 1))
	done
done

program=$work/plot.gp
{
	echo "set terminal svg size $((440 * nr_scenarios)),420 dynamic font 'sans,11' background rgb 'white'"
	echo "set output '$svg'"
	echo "set multiplot layout 1,$nr_scenarios"
	echo "set key below horizontal"
	echo "set grid"
	echo "set xlabel 'threads'"
	echo "set xtics ($thread_counts)"
	echo "set offsets 0.2, 0.2, 0, 0"
	echo "set yrange [0:*]"
	for s in $scenarios; do
		unit=$(awk -F, -v s="$s" '$1 == s { print $4; exit }' "$csv")
		echo "set title '$s'"
		echo "set ylabel 'million $unit per second'"
		plots=()
		for m in $modes; do
			[ -s "$work/$s.$m.dat" ] && plots+=("'$work/$s.$m.dat' using 1:2:3:4 with yerrorlines title '$m'")
		done
		(IFS=,; echo "plot ${plots[*]}")
	done
	echo "unset multiplot"
} >"$program"

gnuplot "$program"
