#!/usr/bin/env bash
# Side-by-side throughput of r-tftpd and atftpd for window shapes
# (blksize x windowsize), with the atftp client on loopback, in one run.
# r-tftpd runs twice: with the window-bytes cap lifted (to see where a window
# overflows the client's socket buffer) and with its defaults.
#
#   contrib/bench/window-sweep.sh [SIZE_MB] [RUNS]
#
# Needs: go, atftp, atftpd (Debian packages), python3. Traffic: 127.0.0.1 only.
set -euo pipefail
size_mb=${1:-20}
runs=${2:-3}
here=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/root"
head -c "$((size_mb * 1024 * 1024))" /dev/urandom >"$work/root/file"
(cd "$here" && CGO_ENABLED=0 go build -o "$work/r-tftpd" .)

"$work/r-tftpd" -l 127.0.0.1 -p 17001 -r "$work/root" --log-level warn \
	--max-window-bytes 100000000 --max-windowsize 65535 & pids+=($!)
"$work/r-tftpd" -l 127.0.0.1 -p 17002 -r "$work/root" --log-level warn & pids+=($!)
atftpd --daemon --no-fork --port 17003 --bind-address 127.0.0.1 --user root.root \
	--logfile /dev/null "$work/root" & pids+=($!)
sleep 0.5

# fetch PORT BLKSIZE WINDOW: prints the median MB/s of $runs fetches, or
# "fail" when a fetch takes over 60 s or the bytes differ.
fetch() {
	local times=()
	for _ in $(seq "$runs"); do
		rm -f "$work/out"
		local start end
		start=$(date +%s.%N)
		if ! timeout 60 atftp --get -r file -l "$work/out" --option "blksize $2" \
			--option "windowsize $3" 127.0.0.1 "$1" >/dev/null 2>&1 ||
			! cmp -s "$work/out" "$work/root/file"; then
			echo fail
			return
		fi
		end=$(date +%s.%N)
		times+=("$(python3 -c "print($end - $start)")")
	done
	python3 -c "import statistics,sys; print('%.0f' % ($size_mb*1.048576/statistics.median(map(float,sys.argv[1:]))))" "${times[@]}"
}

printf '%-8s %-7s %-10s %-16s %-16s %-10s\n' blksize window window_KB "r-tftpd(no cap)" "r-tftpd(default)" atftpd
for shape in "512 16" "512 64" "1468 16" "1468 64" "1468 128" "4096 16" "4096 32" "8192 8" "8192 12" "8192 16" "8192 32" "65464 1" "65464 2" "65464 4" "65464 16"; do
	set -- $shape
	printf '%-8s %-7s %-10s %-16s %-16s %-10s\n' "$1" "$2" "$(($1 * $2 / 1024))" \
		"$(fetch 17001 "$1" "$2")" "$(fetch 17002 "$1" "$2")" "$(fetch 17003 "$1" "$2")"
done
