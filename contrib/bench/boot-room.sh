#!/usr/bin/env bash
# A room of machines booting at once, as the servers see it: N lockstep
# clients start together on 127.0.0.1 and each fetches the same file, a
# third each with curl, tftp-hpa's tftp and atftp (blksize 1468, no
# windowsize), from r-tftpd, atftpd and tftpd-hpa in turn (the order
# rotating every round). It prints, per N and server, the medians of the
# room's wall time (first start to last finish), the aggregate MB/s and the
# server's CPU per GB, with r-tftpd's ratio to the best peer. Every fetched
# file is compared with the source.
#
#   sudo contrib/bench/boot-room.sh
#   sudo ROOM="10 50 150" SIZE=4M ROUNDS=3 BASELINE_BIN=/tmp/r-tftpd-before contrib/bench/boot-room.sh
#
# Environment:
#   ROOM           room sizes (clients at once), space-separated [default: 10 45 150]
#   SIZE           file size, anything `numfmt --from=iec` reads [default: 4M]
#   ROUNDS         rooms per size and server [default: 3]
#   SERVER_BIN, BASELINE_BIN, TFTPD_HPA, CPU_SOURCE: as for peer-bench.sh
#   FETCH_TIMEOUT  seconds one room may take before its stragglers count as
#                  failed [default: 300]
#
# Server CPU is the cgroup's (server and forked children) from before the
# first client starts to after the last transfer child is gone. The clients
# share the machine with the server: on a 2-core machine a slower server
# leaves them more CPU, so the wall time and the CPU per GB tell different
# things and both are shown.
#
# Needs: root, go (unless SERVER_BIN), curl, tftp (tftp-hpa), atftp, atftpd,
# tftpd-hpa's in.tftpd, python3, ss. Exits 1 when any fetch failed.
# Traffic: 127.0.0.1 only.
set -euo pipefail

size=$(numfmt --from=iec "${SIZE:-4M}")
rounds=${ROUNDS:-3}
read -ra rooms <<<"${ROOM:-10 45 150}"
fetch_timeout=${FETCH_TIMEOUT:-300}

bench=boot-room
# shellcheck source=lab.sh
. "$(dirname "$0")/lab.sh"
for tool in atftp curl tftp; do
	command -v "$tool" >/dev/null || die "$tool is not installed"
done

head -c "$size" /dev/urandom >"$work/root/file"
chmod 0644 "$work/root/file"
start_servers

# fetch CLIENT PORT OUT: one lockstep fetch of the file with the client.
fetch() {
	case $1 in
	curl) timeout "$fetch_timeout" curl -sS -o "$3" "tftp://127.0.0.1:$2/file" ;;
	tftp-hpa) timeout "$fetch_timeout" tftp -m binary 127.0.0.1 "$2" -c get file "$3" ;;
	atftp) timeout "$fetch_timeout" atftp --get -r file -l "$3" --option "blksize 1468" 127.0.0.1 "$2" ;;
	esac
}
clients=(curl tftp-hpa atftp)

failures=0
printf 'room\tserver\tround\tnanoseconds\tcpu_usec\n' >"$work/rooms.tsv"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq "$rounds"); do
	for n in "${rooms[@]}"; do
		for i in "${!servers[@]}"; do
			name=${servers[$(((i + round - 1) % ${#servers[@]}))]}
			rm -rf "$work/out" && mkdir "$work/out"
			cpu_before=$(cpu_usec "$name")
			start_ns=$(date +%s%N)
			kids=()
			for c in $(seq "$n"); do
				client=${clients[$((c % ${#clients[@]}))]}
				fetch "$client" "${port[$name]}" "$work/out/$c" >"$work/out/$c.log" 2>&1 &
				kids+=($!)
			done
			failed=0
			for c in "${!kids[@]}"; do
				wait "${kids[$c]}" || failed=$((failed + 1))
			done
			end_ns=$(date +%s%N)
			settle "$name"
			cpu_after=$(cpu_usec "$name")
			for c in $(seq "$n"); do
				[ -f "$work/out/$c" ] && cmp -s "$work/out/$c" "$work/root/file" || failed=$((failed + 1))
			done
			if [ "$failed" = 0 ]; then
				cpu=-
				[ "$cpu_before" = - ] || cpu=$((cpu_after - cpu_before))
				printf '%s\t%s\t%s\t%s\t%s\n' "$n" "$name" "$round" "$((end_ns - start_ns))" "$cpu" >>"$work/rooms.tsv"
			else
				failures=$((failures + 1))
				echo "!!!!!! FAILED: round $round, room of $n, $name: $failed fetch(es) failed or differ" >&2
				grep -h . "$work"/out/*.log 2>/dev/null | sort | uniq -c | sort -rn | head -n 3 | sed 's/^/!!!!!!   /' >&2
			fi
		done
	done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "boot-room: $size-byte file ($(numfmt --to=iec "$size")) per client, $rounds rounds," \
	"clients ${clients[*]} in turn (lockstep), 127.0.0.1; MB = 10^6 bytes"
echo "servers: r-tftpd $rtftpd_version;${BASELINE_BIN:+ baseline $BASELINE_BIN;} atftpd $(atftpd --version 2>&1 | head -n1);" \
	"tftpd-hpa $("$hpa_bin" -V 2>&1 | head -n1)"
echo "CPU: $cpu_source; $(nproc) CPUs, load average $load_before at start, $load_after at end"
echo
BENCH_DIR=$(dirname "$0") python3 - "$work/rooms.tsv" "$rounds" "$size" "${servers[@]}" <<'EOF'
import csv, os, sys

sys.path.insert(0, os.environ["BENCH_DIR"])
from table import cell, median, ratio

rooms_file, rounds, size = sys.argv[1:4]
servers, rounds, size = sys.argv[4:], int(rounds), int(size)
ours = servers[0]
peers = [s for s in servers[1:] if s != "baseline"]

wall, mbps, cpu = {}, {}, {}
for r in csv.DictReader(open(rooms_file), delimiter="\t"):
    key, n = (int(r["room"]), r["server"]), int(r["room"])
    seconds = int(r["nanoseconds"]) / 1e9
    wall.setdefault(key, []).append(seconds)
    mbps.setdefault(key, []).append(n * size / 1e6 / seconds)
    if r["cpu_usec"] != "-":
        cpu.setdefault(key, []).append(int(r["cpu_usec"]) / 1e6 / (n * size / 1e9))

print("| clients | server | wall s | MB/s | server CPU s/GB |")
print("|---|---|---|---|---|")
for n in sorted({n for n, _ in wall}):
    w = {s: median(wall.get((n, s), [])) for s in servers}
    m = {s: median(mbps.get((n, s), [])) for s in servers}
    c = {s: median(cpu.get((n, s), [])) for s in servers}
    for i, s in enumerate(servers):
        done = len(wall.get((n, s), []))
        print(f"| {n if i == 0 else ''} | {s} | {cell(w[s], 2, done, rounds)} "
              f"| {cell(m[s], 0, done, rounds)} | {cell(c[s], 2, done, rounds)} |")
    rows = [(f"**{ours} / best peer**", peers)]
    if "baseline" in servers:
        rows.append((f"**{ours} / baseline**", ["baseline"]))
    for label, others in rows:
        print(f"| | {label} | {ratio(w[ours], {p: w[p] for p in others}, min)} "
              f"| {ratio(m[ours], {p: m[p] for p in others}, max)} "
              f"| {ratio(c[ours], {p: c[p] for p in others}, min)} |")
EOF

if [ "$failures" -gt 0 ]; then
	echo "!!!!!! $failures room(s) FAILED; see the messages above" >&2
	exit 1
fi
