# Shared by the side-by-side benchmarks: the servers on 127.0.0.1, each in a
# cgroup v2 of its own where one can be made (so that tftpd-hpa's forked
# transfer children count), and their CPU time. Source it with bench set to
# the script's name, after the served folder is in "$work/root":
#
#   bench=peer-bench; . "$(dirname "$0")/lab.sh"
#
# It reads SERVER_BIN, BASELINE_BIN, TFTPD_HPA and CPU_SOURCE (see the
# scripts), and leaves servers, pid, port, cgroup, cpu_usec and settle.
# shellcheck shell=bash disable=SC2034,SC2154 # bench is the script's; what this sets is for it

hpa_bin=${TFTPD_HPA:-/tmp/hpa/root/usr/sbin/in.tftpd}
servers=(r-tftpd atftpd tftpd-hpa)
here=$(cd "$(dirname "$0")/../.." && pwd)

die() {
	echo "$bench: $*" >&2
	exit 2
}
[ "$(id -u)" = 0 ] || die "run as root: in.tftpd chroots into the served folder"
[ -x "$hpa_bin" ] || die "no tftpd-hpa server at $hpa_bin (set TFTPD_HPA)"
for tool in atftpd python3 ss; do
	command -v "$tool" >/dev/null || die "$tool is not installed"
done

work=$(mktemp -d)
mkdir -p "$work/root"
declare -A pid port cgroup
cleanup() {
	local name
	for name in "${!pid[@]}"; do
		kill "${pid[$name]}" 2>/dev/null || true
	done
	for name in "${!cgroup[@]}"; do
		# Kills a transfer child the server left running; the cgroup can only
		# be removed once it is empty.
		echo 1 >"${cgroup[$name]}/cgroup.kill" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	for name in "${!cgroup[@]}"; do
		for _ in $(seq 50); do
			rmdir "${cgroup[$name]}" 2>/dev/null && break
			sleep 0.1
		done
	done
	rm -rf "$work"
}
trap cleanup EXIT

# Choose where CPU time is read. The cgroups are made under the one this
# script runs in, so the machine's own cgroup layout is left alone.
cpu_source=${CPU_SOURCE:-cgroup}
cg_parent=""
if [ "$cpu_source" = cgroup ]; then
	cg_mount=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
	cg_parent=$cg_mount$(sed -n 's/^0:://p' /proc/self/cgroup)
	if [ -z "$cg_mount" ] || ! mkdir "$cg_parent/$bench.$$.probe" 2>/dev/null; then
		echo "$bench: no writable cgroup v2; reading /proc/PID/stat (tftpd-hpa CPU n/a)" >&2
		cpu_source=proc
	else
		rmdir "$cg_parent/$bench.$$.probe"
	fi
fi
[ "$cpu_source" = cgroup ] || [ "$cpu_source" = proc ] || die "CPU_SOURCE is cgroup or proc"
clk_tck=$(getconf CLK_TCK)

if [ -n "${SERVER_BIN:-}" ]; then
	rtftpd_bin=$SERVER_BIN
	rtftpd_version="$SERVER_BIN"
else
	rtftpd_bin=$work/r-tftpd
	(cd "$here" && CGO_ENABLED=0 go build -o "$rtftpd_bin" .)
	rtftpd_version="built from $(git -C "$here" describe --always --dirty 2>/dev/null || echo "$here")"
fi

# free_port FROM: prints the first of 100 UDP ports from FROM that no socket
# is bound to.
free_port() {
	local candidate
	for candidate in $(seq "$1" "$(($1 + 99))"); do
		if [ -z "$(ss -Hlun "sport = :$candidate")" ]; then
			echo "$candidate"
			return
		fi
	done
	die "no free UDP port in $1-$(($1 + 99))"
}

# start NAME COMMAND...: runs a server in the background with PORT in its
# arguments replaced by a free port, moves it into its own cgroup, and waits
# (at most 5 s) until it has bound the port.
start() {
	local name=$1 chosen arg args=()
	shift
	chosen=$(free_port 27069)
	for arg in "$@"; do
		args+=("${arg//PORT/$chosen}")
	done
	"${args[@]}" >"$work/$name.log" 2>&1 &
	pid[$name]=$!
	port[$name]=$chosen
	if [ "$cpu_source" = cgroup ]; then
		cgroup[$name]=$cg_parent/$bench.$$.$name
		mkdir "${cgroup[$name]}"
		echo "${pid[$name]}" >"${cgroup[$name]}/cgroup.procs"
	fi
	for _ in $(seq 50); do
		kill -0 "${pid[$name]}" 2>/dev/null ||
			die "$name exited at startup: $(tail -n 3 "$work/$name.log")"
		if ss -Hlunp "sport = :$chosen" | grep -q "pid=${pid[$name]},"; then
			return
		fi
		sleep 0.1
	done
	die "$name did not bind 127.0.0.1:$chosen within 5 s"
}

# start_servers: starts every server on the served folder, each allowed
# 1000 transfers at once (r-tftpd's default is 64, atftpd's 100).
start_servers() {
	start r-tftpd "$rtftpd_bin" -l 127.0.0.1 -p PORT -r "$work/root" --log-level warn -m 1000
	if [ -n "${BASELINE_BIN:-}" ]; then
		start baseline "$BASELINE_BIN" -l 127.0.0.1 -p PORT -r "$work/root" --log-level warn -m 1000
		servers=(r-tftpd baseline atftpd tftpd-hpa)
	fi
	start atftpd atftpd --daemon --no-fork --port PORT --bind-address 127.0.0.1 --maxthread 1000 \
		--user root.root --logfile /dev/null "$work/root"
	start tftpd-hpa "$hpa_bin" -L -s "$work/root" -a 127.0.0.1:PORT
}

# cpu_usec NAME: prints the CPU time (user+sys) the server has used so far in
# microseconds, or "-" where it cannot be measured.
cpu_usec() {
	if [ "$cpu_source" = cgroup ]; then
		awk '$1 == "usage_usec" { print $2 }' "${cgroup[$1]}/cpu.stat"
	elif [ "$1" = tftpd-hpa ]; then
		echo -
	else
		# utime and stime are fields 14 and 15; the name in field 2 may hold
		# spaces, so count from the ")" that closes it.
		sed 's/.*) //' "/proc/${pid[$1]}/stat" |
			awk -v tck="$clk_tck" '{ printf "%d\n", ($12 + $13) * 1000000 / tck }'
	fi
}

# settle NAME: waits (at most 2 s) until no transfer child of the server is
# left, so that the CPU read after a fetch holds all of its work.
settle() {
	[ "$cpu_source" = cgroup ] || return 0
	for _ in $(seq 200); do
		[ "$(wc -l <"${cgroup[$1]}/cgroup.procs")" -le 1 ] && return
		sleep 0.01
	done
}
