#!/usr/bin/env bash
# Upload throughput and server CPU of r-tftpd --upload-dir against tftpd-hpa
# -c (create), with the atftp client on loopback, in one run: blksize 1468,
# windowsize 1 and 16 (tftpd-hpa has no windowsize and answers lockstep).
# CPU is what the server's cgroup used, the processes tftpd-hpa forks per
# transfer included, per GB stored. r-tftpd fsyncs every upload and its
# folder before the final ACK; tftpd-hpa does not.
#
#   contrib/bench/upload-bench.sh [SIZE_MB] [RUNS]
#
# Needs: root (a cgroup per server; in.tftpd chroots), go, atftp, python3,
# and tftpd-hpa's in.tftpd (IN_TFTPD, default /tmp/hpa/root/usr/sbin/in.tftpd:
# apt-get download tftpd-hpa; dpkg -x tftpd-hpa_*.deb /tmp/hpa/root).
# BENCH_DIR chooses the file system the uploads land on (default $TMPDIR or
# /tmp). Traffic: 127.0.0.1 only.
set -euo pipefail
size_mb=${1:-50}
runs=${2:-3}
in_tftpd=${IN_TFTPD:-/tmp/hpa/root/usr/sbin/in.tftpd}
here=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/upload-bench.XXXXXX")
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
	cgroups=/sys/fs/cgroup
	cpu_seconds() { awk '$1 == "usage_usec" { print $2 / 1e6 }' "$1/cpu.stat"; }
else
	cgroups=/sys/fs/cgroup/cpuacct
	cpu_seconds() { awk '{ print $1 / 1e9 }' "$1/cpuacct.usage"; }
fi
cg_rtftpd=$cgroups/upload-bench-rtftpd-$$
cg_hpa=$cgroups/upload-bench-hpa-$$
pids=()
cleanup() {
	kill "${pids[@]}" 2>/dev/null || true
	wait 2>/dev/null || true
	rmdir "$cg_rtftpd" "$cg_hpa" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/rtftpd" "$work/hpa" "$cg_rtftpd" "$cg_hpa"
head -c "$((size_mb * 1024 * 1024))" /dev/urandom >"$work/file"
(cd "$here" && CGO_ENABLED=0 go build -o "$work/r-tftpd" .)

# in_cgroup CGROUP COMMAND...: runs the command inside the cgroup, from its
# first instruction on, so that whatever it forks is counted too.
in_cgroup() {
	# shellcheck disable=SC2016 # expanded by the inner shell
	sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$@" &
	pids+=($!)
}
in_cgroup "$cg_rtftpd" "$work/r-tftpd" -l 127.0.0.1 -p 17021 -r "$work/rtftpd" \
	--upload-dir "$work/rtftpd" --upload-max-size 4G --log-level warn
in_cgroup "$cg_hpa" "$in_tftpd" --foreground --listen --address 127.0.0.1:17022 \
	--create --user root --secure "$work/hpa"
sleep 0.5

# put PORT DIR CGROUP WINDOW: prints the median MB/s of $runs uploads and
# the server's CPU seconds per GB, or "fail fail" when an upload takes over
# 120 s or the stored bytes differ.
put() {
	local times=() cpu_before cpu_after
	cpu_before=$(cpu_seconds "$3")
	for _ in $(seq "$runs"); do
		rm -f "$2/up"
		local start end
		start=$(date +%s.%N)
		if ! timeout 120 atftp --put -l "$work/file" -r up --option "blksize 1468" \
			--option "windowsize $4" 127.0.0.1 "$1" >/dev/null 2>&1 ||
			! cmp -s "$work/file" "$2/up"; then
			echo "fail fail"
			return
		fi
		end=$(date +%s.%N)
		times+=("$(python3 -c "print($end - $start)")")
	done
	cpu_after=$(cpu_seconds "$3")
	python3 -c "
import statistics, sys
mb, runs, cpu = $size_mb * 1.048576, $runs, $cpu_after - $cpu_before
print('%.1f %.2f' % (mb / statistics.median(map(float, sys.argv[1:])), cpu / (mb * runs / 1000)))" "${times[@]}"
}

printf '%-8s %-7s %-14s %-18s %-16s %-18s\n' blksize window "r-tftpd MB/s" "r-tftpd CPU s/GB" "tftpd-hpa MB/s" "tftpd-hpa CPU s/GB"
for window in 1 16; do
	read -r r_rate r_cpu < <(put 17021 "$work/rtftpd" "$cg_rtftpd" "$window")
	read -r h_rate h_cpu < <(put 17022 "$work/hpa" "$cg_hpa" "$window")
	printf '%-8s %-7s %-14s %-18s %-16s %-18s\n' 1468 "$window" "$r_rate" "$r_cpu" "$h_rate" "$h_cpu"
done
