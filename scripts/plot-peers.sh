#!/usr/bin/env bash
# Plots the CSV that `ptl bench peers --csv` (or --csv-file) writes as four
# SVGs in OUT_DIR:
#   peers-throughput.svg  operations per second per structure, one panel per
#                         layout and thread count (log scale)
#   peers-bytes.svg       bytes per mapped page per structure and layout
#   peers-kernel.svg      pages per second of the kernel and of ptl
#   peers-sweep.svg       nanoseconds per page against the page count, if
#                         the run had --sweep
# SWEEP.csv, if given, is the CSV of another run whose size sweep is
# plotted in place of PEERS.csv's.
#
# Usage: scripts/plot-peers.sh PEERS.csv OUT_DIR [SWEEP.csv]
# Needs gnuplot (Debian package gnuplot-nox).
set -euo pipefail

if [ $# -ne 2 ] && [ $# -ne 3 ]; then
	echo "usage: $0 PEERS.csv OUT_DIR [SWEEP.csv]" >&2
	exit 2
fi
csv=$1
out=$2
sweep_csv=${3:-$1}

for file in "$csv" "$sweep_csv"; do
	if [ ! -r "$file" ]; then
		echo "plot-peers: cannot read $file" >&2
		exit 2
	fi
	if ! head -n 1 "$file" | grep -q '^section,layout,structure,threads,pages,metric,median,min,max$'; then
		echo "plot-peers: $file does not start with the header of ptl bench peers --csv" >&2
		exit 2
	fi
done
if [ ! -d "$out" ]; then
	echo "plot-peers: $out is not a directory" >&2
	exit 2
fi
if ! command -v gnuplot >/dev/null; then
	echo "plot-peers: gnuplot not found; install the gnuplot-nox package" >&2
	exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Columns: 1 section, 2 layout, 3 structure, 4 threads, 5 pages, 6 metric,
# 7 median, 8 min, 9 max.
layouts=$(awk -F, '$1 == "structure" && !seen[$2]++ { print $2 }' "$csv")
structures=$(awk -F, '$1 == "structure" && !seen[$3]++ { print $3 }' "$csv")
thread_counts=$(awk -F, '$1 == "structure" && !seen[$4]++ { print $4 }' "$csv" | sort -n)
operations="insert lookup-order lookup-random lookup-chase remove"
nr_structures=$(wc -w <<<"$structures")
nr_layouts=$(wc -w <<<"$layouts")
nr_threads=$(wc -w <<<"$thread_counts")

svg_header() {
	echo "set terminal svg size $1,$2 dynamic font 'sans,10' background rgb 'white'"
	echo "set output '$3'"
	# Ten distinct colours, so that no two structures share one.
	local colours=(9400d3 009e73 56b4e9 e69f00 f0e442 0072b2 e51e10 000000 cc79a7 8c564b) i
	for i in "${!colours[@]}"; do
		echo "set linetype $((i + 1)) lc rgb '#${colours[$i]}'"
	done
	echo "set linetype cycle ${#colours[@]}"
}

# Prints a plot command that draws columns 2 to COLUMNS + 1 of FILE as
# clustered bars, one cluster per row, titled by the header row.
histogram_plot() {
	local file=$1 columns=$2 parts=() i
	for ((i = 2; i <= columns + 1; i++)); do
		parts+=("'$file' using $i:xtic(1) title columnheader($i)")
	done
	(IFS=,; echo "plot ${parts[*]}")
}

# One table per layout and thread count: a row per operation, a column per
# structure, in millions of operations per second.
for l in $layouts; do
	for t in $thread_counts; do
		{
			echo operation $structures
			for op in $operations; do
				row=$op
				for s in $structures; do
					value=$(awk -F, -v l="$l" -v s="$s" -v t="$t" -v m="${op}_per_second" \
						'$1 == "structure" && $2 == l && $3 == s && $4 == t && $6 == m { print $7 / 1e6 }' "$csv")
					row="$row ${value:-NaN}"
				done
				echo "$row"
			done
		} >"$work/throughput.$l.$t.dat"
	done
done

{
	svg_header $((520 * nr_layouts)) $((380 * nr_threads)) "$out/peers-throughput.svg"
	echo "set multiplot layout $nr_threads,$nr_layouts"
	echo "set style data histograms"
	echo "set style histogram clustered gap 1"
	echo "set style fill solid 0.8 border -1"
	echo "set logscale y"
	echo "set ylabel 'million operations per second'"
	echo "set grid ytics"
	echo "set key outside right font 'sans,8'"
	echo "set xtics font 'sans,8' rotate by -20"
	for t in $thread_counts; do
		for l in $layouts; do
			echo "set title '$l layout, $t thread$([ "$t" -eq 1 ] || echo s)'"
			histogram_plot "$work/throughput.$l.$t.dat" "$nr_structures"
		done
	done
	echo "unset multiplot"
} >"$work/throughput.gp"
gnuplot "$work/throughput.gp"

# Bytes per mapped page at the first thread count: a row per structure, a
# column per layout.
first_threads=$(head -n 1 <<<"$thread_counts")
{
	echo structure $layouts
	for s in $structures; do
		row=$s
		for l in $layouts; do
			value=$(awk -F, -v l="$l" -v s="$s" -v t="$first_threads" \
				'$1 == "structure" && $2 == l && $3 == s && $4 == t && $6 == "bytes_per_page" { print $7 }' "$csv")
			row="$row ${value:-NaN}"
		done
		echo "$row"
	done
} >"$work/bytes.dat"

{
	svg_header 900 420 "$out/peers-bytes.svg"
	echo "set style data histograms"
	echo "set style histogram clustered gap 1"
	echo "set style fill solid 0.8 border -1"
	echo "set logscale y"
	echo "set ylabel 'bytes per mapped page'"
	echo "set title 'memory per mapped page ($first_threads thread$([ "$first_threads" -eq 1 ] || echo s))'"
	echo "set grid ytics"
	echo "set key top left"
	echo "set xtics rotate by -30 font 'sans,9'"
	histogram_plot "$work/bytes.dat" "$nr_layouts"
} >"$work/bytes.gp"
gnuplot "$work/bytes.gp"

# Kernel comparison: a row per run, a column per thread count, in millions
# of pages per second.
kernel_runs=$(awk -F, '$1 == "kernel" && !seen[$3]++ { print $3 }' "$csv")
if [ -n "$kernel_runs" ]; then
	kernel_threads=$(awk -F, '$1 == "kernel" && !seen[$4]++ { print $4 }' "$csv" | sort -n)
	{
		printf 'run'
		for t in $kernel_threads; do printf ' "%s thread%s"' "$t" "$([ "$t" -eq 1 ] || echo s)"; done
		echo
		while IFS= read -r run; do
			printf '"%s"' "$run"
			for t in $kernel_threads; do
				awk -F, -v r="$run" -v t="$t" '$1 == "kernel" && $3 == r && $4 == t { printf " %s", $7 / 1e6 }' "$csv"
			done
			echo
		done <<<"$kernel_runs"
	} >"$work/kernel.dat"

	{
		svg_header 900 440 "$out/peers-kernel.svg"
		echo "set style data histograms"
		echo "set style histogram clustered gap 1"
		echo "set style fill solid 0.8 border -1"
		echo "set logscale y"
		echo "set ylabel 'million pages per second'"
		echo "set title 'page faults and range populate: the kernel against ptl'"
		echo "set grid ytics"
		echo "set key top left"
		echo "set xtics rotate by -30 font 'sans,9'"
		histogram_plot "$work/kernel.dat" "$(wc -w <<<"$kernel_threads")"
	} >"$work/kernel.gp"
	gnuplot "$work/kernel.gp"
fi

# Size sweep: one line per structure, one panel per operation.
if awk -F, '$1 == "sweep" { found = 1 } END { exit !found }' "$sweep_csv"; then
	for s in $structures; do
		for m in insert lookup-random remove; do
			awk -F, -v s="$s" -v m="${m}_ns_per_page" '$1 == "sweep" && $3 == s && $6 == m { print $5, $7 }' "$sweep_csv" |
				sort -n >"$work/sweep.$s.$m.dat"
		done
	done

	{
		svg_header 1500 440 "$out/peers-sweep.svg"
		echo "set multiplot layout 1,3"
		echo "set logscale x 2"
		echo "set logscale y"
		echo "set format x '2^{%L}'"
		echo "set xlabel 'pages mapped'"
		echo "set ylabel 'nanoseconds per page'"
		echo "set grid"
		echo "set key top left font 'sans,8'"
		for m in insert lookup-random remove; do
			echo "set title '$m, dense layout, 1 thread'"
			plots=()
			for s in $structures; do
				[ -s "$work/sweep.$s.$m.dat" ] && plots+=("'$work/sweep.$s.$m.dat' using 1:2 with linespoints title '$s'")
			done
			(IFS=,; echo "plot ${plots[*]}")
		done
		echo "unset multiplot"
	} >"$work/sweep.gp"
	gnuplot "$work/sweep.gp"
fi
