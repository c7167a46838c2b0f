#!/usr/bin/env bash
# Side-by-side throughput and server CPU of r-tftpd, atftpd and tftpd-hpa, as
# a new user would measure them: Debian's atftp client fetches one file of
# random bytes from each server on 127.0.0.1, interleaved (for each round, for
# each shape, each server in turn, the order rotating every round), and the
# script prints the medians as a markdown table with r-tftpd's ratio to the
# best peer. Every fetched file is compared with the source.
#
#   sudo contrib/bench/peer-bench.sh
#   sudo SIZE=20M ROUNDS=5 SERVER_BIN=/tmp/r-tftpd-before contrib/bench/peer-bench.sh
#
# Environment:
#   SIZE           file size, anything `numfmt --from=iec` reads [default: 50M]
#   SHAPES         blksize:windowsize pairs to fetch with, space-separated
#                  [default: 1468:1 1468:16 1468:64 8192:8 512:1]
#   ROUNDS         fetches per shape and server [default: 3]
#   SERVER_BIN     r-tftpd binary to measure [default: built from this checkout]
#   BASELINE_BIN   an earlier r-tftpd binary, measured in the same rounds as
#                  "baseline" and compared with SERVER_BIN, not counted as a
#                  peer [default: none]
#   TFTPD_HPA      tftpd-hpa's server [default: /tmp/hpa/root/usr/sbin/in.tftpd]
#   FETCH_TIMEOUT  seconds one fetch may take before it counts as failed [default: 120]
#   CPU_SOURCE     cgroup or proc [default: cgroup where one can be made]
#
# Server CPU is user+sys time during a fetch. tftpd-hpa serves each transfer
# from a forked child that its parent never waits for, so the parent's
# /proc/PID/stat never sees that time: the script puts each server in a
# cgroup v2 of its own and reads cpu.stat, which counts every process in it.
# Without a writable cgroup v2 (or with CPU_SOURCE=proc) it reads utime+stime
# from /proc/PID/stat in clock ticks, and tftpd-hpa's CPU is shown as n/a.
#
# Needs: root (in.tftpd chroots), go (unless SERVER_BIN), atftp, atftpd,
# tftpd-hpa's in.tftpd, python3, ss. Exits 1 when any fetch failed.
# Traffic: 127.0.0.1 only.
set -euo pipefail

size=$(numfmt --from=iec "${SIZE:-50M}")
rounds=${ROUNDS:-3}
fetch_timeout=${FETCH_TIMEOUT:-120}
read -ra shapes <<<"${SHAPES:-1468:1 1468:16 1468:64 8192:8 512:1}"
shapes=("${shapes[@]/:/ }")

bench=peer-bench
# shellcheck source=lab.sh
. "$(dirname "$0")/lab.sh"
command -v atftp >/dev/null || die "atftp is not installed"

head -c "$size" /dev/urandom >"$work/root/file"
head -c 20000 /dev/urandom >"$work/root/probe"
chmod 0644 "$work/root/file" "$work/root/probe"

start_servers


# granted NAME BLKSIZE WINDOWSIZE: prints the blksize and windowsize the
# server grants (from the OACK that atftp --trace shows); tftpd-hpa, for one,
# does not know windowsize and serves such a request in lockstep.
granted() {
	local oack bs=512 ws=1
	timeout 10 atftp --trace --get -r probe -l "$work/probe.out" --option "blksize $2" \
		--option "windowsize $3" 127.0.0.1 "${port[$1]}" >"$work/trace" 2>&1 || true
	oack=$(grep -m1 '^received OACK' "$work/trace" || true)
	if [[ $oack =~ blksize:\ ([0-9]+) ]]; then bs=${BASH_REMATCH[1]}; fi
	if [[ $oack =~ windowsize:\ ([0-9]+) ]]; then ws=${BASH_REMATCH[1]}; fi
	if ! grep -q '^received.*DATA' "$work/trace"; then
		echo "no data"
	else
		echo "bs$bs ws$ws"
	fi
}

printf 'shape\tserver\tgranted\n' >"$work/granted.tsv"
for shape in "${shapes[@]}"; do
	read -r bs ws <<<"$shape"
	for name in "${servers[@]}"; do
		printf 'bs%s ws%s\t%s\t%s\n' "$bs" "$ws" "$name" "$(granted "$name" "$bs" "$ws")" >>"$work/granted.tsv"
	done
done

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
failures=0
printf 'shape\tserver\tround\tnanoseconds\tcpu_usec\n' >"$work/fetches.tsv"
for round in $(seq "$rounds"); do
	for shape in "${shapes[@]}"; do
		read -r bs ws <<<"$shape"
		for i in "${!servers[@]}"; do
			name=${servers[$(((i + round - 1) % ${#servers[@]}))]}
			rm -f "$work/out"
			cpu_before=$(cpu_usec "$name")
			start_ns=$(date +%s%N)
			fetched=yes
			timeout "$fetch_timeout" atftp --get -r file -l "$work/out" \
				--option "blksize $bs" --option "windowsize $ws" \
				127.0.0.1 "${port[$name]}" >"$work/atftp.log" 2>&1 || fetched=no
			end_ns=$(date +%s%N)
			settle "$name"
			cpu_after=$(cpu_usec "$name")
			if [ "$fetched" = yes ] && cmp -s "$work/out" "$work/root/file"; then
				cpu=-
				[ "$cpu_before" = - ] || cpu=$((cpu_after - cpu_before))
				printf 'bs%s ws%s\t%s\t%s\t%s\t%s\n' "$bs" "$ws" "$name" "$round" \
					"$((end_ns - start_ns))" "$cpu" >>"$work/fetches.tsv"
			else
				failures=$((failures + 1))
				{
					echo "!!!!!! FAILED: round $round, bs$bs ws$ws, $name:" \
						"atftp $([ "$fetched" = yes ] && echo "finished but the file differs from the source" || echo "failed or timed out after ${fetch_timeout}s")"
					tail -n 3 "$work/atftp.log" | sed 's/^/!!!!!!   /'
					kill -0 "${pid[$name]}" 2>/dev/null || echo "!!!!!!   $name is no longer running"
				} >&2
			fi
		done
	done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

case $cpu_source in
cgroup) cpu_note="cgroup v2 cpu.stat of the server and its children" ;;
proc) cpu_note="/proc/PID/stat utime+stime, ${clk_tck} ticks/s" ;;
esac
echo
echo "peer-bench: $size-byte file ($(numfmt --to=iec "$size")), $rounds rounds, atftp client, 127.0.0.1; MB = 10^6 bytes"
echo "servers: r-tftpd $rtftpd_version;${BASELINE_BIN:+ baseline $BASELINE_BIN;} atftpd $(atftpd --version 2>&1 | head -n1);" \
	"tftpd-hpa $("$hpa_bin" -V 2>&1 | head -n1)"
echo "CPU: $cpu_note; $(nproc) CPUs, load average $load_before at start, $load_after at end" \
	"(other work on the machine shows in both columns)"
echo
BENCH_DIR=$(dirname "$0") python3 - "$work/granted.tsv" "$work/fetches.tsv" "$rounds" "$size" "${servers[@]}" <<'EOF'
import csv, os, sys

sys.path.insert(0, os.environ["BENCH_DIR"])
from table import cell, median, ratio

granted_file, fetches_file, rounds, size = sys.argv[1:5]
servers, rounds, size = sys.argv[5:], int(rounds), int(size)
ours = servers[0]
peers = [s for s in servers[1:] if s != "baseline"]

granted = {(r["shape"], r["server"]): r["granted"]
           for r in csv.DictReader(open(granted_file), delimiter="\t")}
shapes = list(dict.fromkeys(shape for shape, _ in granted))
mbps, cpu_per_gb = {}, {}
for r in csv.DictReader(open(fetches_file), delimiter="\t"):
    key = (r["shape"], r["server"])
    mbps.setdefault(key, []).append(size / 1e6 / (int(r["nanoseconds"]) / 1e9))
    if r["cpu_usec"] != "-":
        cpu_per_gb.setdefault(key, []).append(int(r["cpu_usec"]) / 1e6 / (size / 1e9))

print("| shape | server | granted | MB/s | server CPU s/GB |")
print("|---|---|---|---|---|")
for shape in shapes:
    speed = {s: median(mbps.get((shape, s), [])) for s in servers}
    cpu = {s: median(cpu_per_gb.get((shape, s), [])) for s in servers}
    for i, s in enumerate(servers):
        key = (shape, s)
        done = len(mbps.get(key, []))
        print(f"| {shape if i == 0 else ''} | {s} | {granted[key]} "
              f"| {cell(speed[s], 0, done, rounds)} | {cell(cpu[s], 2, done, rounds)} |")
    print(f"| | **{ours} / best peer** | "
          f"| {ratio(speed[ours], {p: speed[p] for p in peers}, max)} "
          f"| {ratio(cpu[ours], {p: cpu[p] for p in peers}, min)} |")
    if "baseline" in servers:
        print(f"| | **{ours} / baseline** | "
              f"| {ratio(speed[ours], {'baseline': speed['baseline']}, max)} "
              f"| {ratio(cpu[ours], {'baseline': cpu['baseline']}, min)} |")
EOF

if [ "$failures" -gt 0 ]; then
	echo "!!!!!! $failures fetch(es) FAILED; see the messages above" >&2
	exit 1
fi
