#!/usr/bin/env bash
# Installs the Debian packages that ptl needs to build, test and benchmark.
set -euo pipefail

packages=(
	cmake ninja-build g++ clang libclang-rt-14-dev
	libgtest-dev libgmock-dev libbenchmark-dev
	libcli11-dev libfmt-dev nlohmann-json3-dev
	libabsl-dev libtbb-dev libcds-dev libjudy-dev gnuplot-nox
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
	echo "install-deps: all ${#packages[@]} packages are installed"
	exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
