// The options tftpd-hpa users have: --refuse and --reject-all, as real
// clients and the project's own client see them in the OACK, with the
// bytes each receives exact.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// atftpOACKRE is the OACK line of atftp --trace: "received OACK <tsize: 3000, blksize: 1468, >".
var atftpOACKRE = regexp.MustCompile(`received OACK <([^>]*)>`)

// atftpTracedGet fetches remote with atftp --trace asking for options, and
// returns the bytes it wrote and the OACK it reports (nil when the server
// sent none).
func atftpTracedGet(t *testing.T, server *testServer, remote string, options ...string) ([]byte, map[string]string) {
	t.Helper()
	local := filepath.Join(t.TempDir(), "out")
	c := interopCase{client: "atftp", name: "atftp --trace", args: func(host, port, remote, local string) []string {
		return append([]string{"--trace"}, atftpArgs(opRRQ, options...)(host, port, remote, local)...)
	}}
	out := runClient(t, c, server.addr.Addr().String(), strconv.Itoa(int(server.addr.Port())), remote, local)
	got := readFile(t, local)
	m := atftpOACKRE.FindStringSubmatch(string(out))
	if m == nil {
		return got, nil
	}
	oack := map[string]string{}
	for _, pair := range strings.Split(m[1], ",") {
		if name, value, ok := strings.Cut(strings.TrimSpace(pair), ": "); ok {
			oack[name] = value
		}
	}
	return got, oack
}

// TestRefusedOptionsAreNeverAcknowledged: a refused option is left out of
// the OACK and the transfer runs as if the client had not asked for it;
// the others are acknowledged as usual. Names are case-insensitive.
func TestRefusedOptionsAreNeverAcknowledged(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "--refuse", "WindowSize", "--refuse", "tsize")
	want := ts.writeFile(t, "file", 100_000)

	res, err := tftpGet(ts.addr, "file", clientOptions{blksize: 1024, windowsize: 8, timeout: 2, tsize: true})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
	if wantOACK := map[string]string{"blksize": "1024", "timeout": "2"}; !maps.Equal(res.oack, wantOACK) {
		t.Fatalf("OACK %v, want %v", res.oack, wantOACK)
	}
	if r := ts.result(t); r.err != nil || r.blksize != 1024 || r.windowsize != 1 {
		t.Fatalf("server: %v, blksize %d, windowsize %d; want 1024 and 1", r.err, r.blksize, r.windowsize)
	}

	got, oack := atftpTracedGet(t, ts, "file", "blksize 1468", "windowsize 16", "tsize 0")
	assertSame(t, got, want)
	if wantOACK := map[string]string{"blksize": "1468"}; !maps.Equal(oack, wantOACK) {
		t.Fatalf("atftp saw OACK %v, want %v", oack, wantOACK)
	}
	if r := ts.result(t); r.err != nil || r.blksize != 1468 || r.windowsize != 1 {
		t.Fatalf("server: %v, blksize %d, windowsize %d; want 1468 and 1", r.err, r.blksize, r.windowsize)
	}

	// The timers and the numbering: timeout, utimeout and rollover.
	ts = startServer(t, "127.0.0.1", "--refuse", "timeout", "--refuse", "utimeout", "--refuse", "ROLLOVER")
	want = ts.writeFile(t, "file", 3000)
	res, err = tftpGet(ts.addr, "file", clientOptions{blksize: 1000, timeout: 2,
		extra: []option{{"utimeout", "50000"}, {"rollover", "1"}}})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
	if wantOACK := map[string]string{"blksize": "1000"}; !maps.Equal(res.oack, wantOACK) {
		t.Fatalf("OACK %v, want %v", res.oack, wantOACK)
	}
	if r := ts.result(t); r.err != nil {
		t.Fatal(r.err)
	}
}

// TestRefusingEveryAskedOptionSendsNoOACK: with all it asked for refused,
// the client gets DATA at once, 512-byte blocks, as from a server without
// options; curl, which asks for blksize and tsize, fetches exact bytes.
func TestRefusingEveryAskedOptionSendsNoOACK(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "--refuse", "blksize", "--refuse", "tsize")
	want := ts.writeFile(t, "file", 5000)
	res, err := tftpGet(ts.addr, "file", clientOptions{blksize: 1024, tsize: true})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
	if res.oack != nil {
		t.Fatalf("OACK %v, want none", res.oack)
	}
	if r := ts.result(t); r.err != nil || r.blksize != 512 {
		t.Fatalf("server: %v, blksize %d; want 512", r.err, r.blksize)
	}
	host, port := ts.addr.Addr().String(), strconv.Itoa(int(ts.addr.Port()))
	assertSame(t, fetchWithClient(t, interopCase{client: "curl", name: "curl blksize 1024",
		args: curlArgs(opRRQ, "--tftp-blksize", "1024")}, host, port, "file"), want)
	if r := ts.result(t); r.err != nil || r.blksize != 512 {
		t.Fatalf("server: %v, blksize %d; want 512", r.err, r.blksize)
	}
}

// TestRefusedTsizeOfAnUploadIsNotSeen: a WRQ's refused tsize is as if not
// sent: larger than --upload-max-size it is not refused before the data,
// and an upload within the limit lands exact without it in the OACK.
func TestRefusedTsizeOfAnUploadIsNotSeen(t *testing.T) {
	ts, dir := startUploadServer(t, "127.0.0.1", "--refuse", "tsize", "--upload-max-size", "4K")
	data := randomBytes(3000, 7)
	oack, err := tftpPut(ts.addr, "up", data, clientOptions{blksize: 1000, tsize: true})
	if err != nil {
		t.Fatal(err)
	}
	if wantOACK := map[string]string{"blksize": "1000"}; !maps.Equal(oack, wantOACK) {
		t.Fatalf("OACK %v, want %v", oack, wantOACK)
	}
	if r := ts.result(t); r.err != nil {
		t.Fatal(r.err)
	}
	assertSame(t, readFile(t, filepath.Join(dir, "up")), data)
	// Announcing 5000 bytes is not seen: the upload starts, and is stopped
	// with ERROR 3 only once its bytes pass the limit.
	oack, err = tftpPut(ts.addr, "big", randomBytes(5000, 8), clientOptions{blksize: 1000, tsize: true})
	wantWireError(t, err, codeDiskFull)
	if oack == nil {
		t.Fatal("the upload was refused before its data, as if its tsize was seen")
	}
	if r := ts.result(t); r.err == nil {
		t.Fatal("server: an upload past --upload-max-size succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "big")); !os.IsNotExist(err) {
		t.Fatalf("the refused upload left a file: %v", err)
	}
}

// TestRejectAllIsNoRFC2347: tftpd-hpa's --reject-all sends no OACK
// whatever is asked; atftp, asking for three options, gets exact bytes.
func TestRejectAllIsNoRFC2347(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "--reject-all")
	want := ts.writeFile(t, "file", 3000)
	got, oack := atftpTracedGet(t, ts, "file", "blksize 1468", "windowsize 16", "tsize 0")
	assertSame(t, got, want)
	if oack != nil {
		t.Fatalf("atftp saw OACK %v, want none", oack)
	}
	if r := ts.result(t); r.err != nil || r.blksize != 512 || r.windowsize != 1 {
		t.Fatalf("server: %v, blksize %d, windowsize %d; want 512 and 1", r.err, r.blksize, r.windowsize)
	}
}

// TestRolloverPastBlock65535: 70,000 blocks of 8 bytes, down and up, with
// rollover 0 and 1 and without the option: the block after 65535 is
// numbered as granted, the option is acknowledged only when asked, and
// the bytes arrive exact.
func TestRolloverPastBlock65535(t *testing.T) {
	ts, dir := startUploadServer(t, "127.0.0.1")
	const size = 8*70_000 + 3
	want := ts.writeFile(t, "big", size)
	for _, c := range []struct {
		name     string
		extra    []option
		wantNext int // the number of the block after 65535
	}{
		{"not asked", nil, 0},
		{"rollover 0", []option{{"rollover", "0"}}, 0},
		{"rollover 1", []option{{"rollover", "1"}}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := clientOptions{blksize: 8, windowsize: 32, extra: c.extra}
			wantOACK := map[string]string{"blksize": "8", "windowsize": "32"}
			for _, e := range c.extra {
				wantOACK[e.name] = e.value
			}
			res, err := tftpGet(ts.addr, "big", o)
			if err != nil {
				t.Fatal(err)
			}
			assertSame(t, res.data, want)
			if !maps.Equal(res.oack, wantOACK) || res.numberAfter65535 != c.wantNext {
				t.Fatalf("OACK %v, block after 65535 numbered %d; want %v and %d", res.oack, res.numberAfter65535, wantOACK, c.wantNext)
			}
			if r := ts.result(t); r.err != nil {
				t.Fatal(r.err)
			}

			up := randomBytes(size, 11)
			name := "up-" + strings.ReplaceAll(c.name, " ", "-")
			oack, err := tftpPut(ts.addr, name, up, o)
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(oack, wantOACK) {
				t.Fatalf("upload OACK %v, want %v", oack, wantOACK)
			}
			if r := ts.result(t); r.err != nil {
				t.Fatal(r.err)
			}
			assertSame(t, readFile(t, filepath.Join(dir, name)), up)
		})
	}
}

// TestRolloverBadValuesAreIgnored: a rollover other than 0 or 1 is not
// acknowledged, and the numbers wrap to 0 as without it.
func TestRolloverBadValuesAreIgnored(t *testing.T) {
	ts := startServer(t, "127.0.0.1")
	want := ts.writeFile(t, "file", 2000)
	for _, v := range []string{"2", "65535", "-1", "one", ""} {
		res, err := tftpGet(ts.addr, "file", clientOptions{blksize: 1000, extra: []option{{"rollover", v}}})
		if err != nil {
			t.Fatal(err)
		}
		assertSame(t, res.data, want)
		if wantOACK := map[string]string{"blksize": "1000"}; !maps.Equal(res.oack, wantOACK) {
			t.Fatalf("rollover %q: OACK %v, want %v", v, res.oack, wantOACK)
		}
		ts.result(t)
	}
}

// oackResendDelay sends a request (op) for name with options and,
// answering only with an ERROR at the end, reports the OACK and how long
// the server took to send it again.
func oackResendDelay(t *testing.T, server netip.AddrPort, op uint16, name string, options []option) (map[string]string, time.Duration) {
	t.Helper()
	c := newRawClient(t, server)
	c.send(clientOptions{extra: options}.requestPacket(op, name))
	first := c.recv()
	sent := time.Now()
	if packetOp(first) != opOACK {
		t.Fatalf("got %q, want an OACK", first)
	}
	oack := parseOACK(first)
	again := c.recv()
	delay := time.Since(sent)
	if !bytes.Equal(again, first) {
		t.Fatalf("got %q, want the OACK again", again)
	}
	c.send([]byte{0, opERROR, 0, 0, 0}) // the transfer ends now, not after its timeouts
	return oack, delay
}

// TestUtimeoutSetsTheRetransmissionTimeout: utimeout is echoed as asked and
// caps the timer (the OACK comes again within a fraction of the 1 s the
// first timeout otherwise waits), of downloads and uploads; the later of
// timeout and utimeout holds; a value outside 10000-255000000 is left out
// and changes nothing.
func TestUtimeoutSetsTheRetransmissionTimeout(t *testing.T) {
	ts, _ := startUploadServer(t, "127.0.0.1", "-t", "3")
	ts.writeFile(t, "file", 100)
	for _, c := range []struct {
		name     string
		op       uint16
		options  []option
		wantOACK map[string]string
		fast     bool
	}{
		{"utimeout 30000", opRRQ, []option{{"utimeout", "30000"}}, map[string]string{"utimeout": "30000"}, true},
		{"timeout then utimeout", opRRQ, []option{{"timeout", "2"}, {"utimeout", "30000"}},
			map[string]string{"timeout": "2", "utimeout": "30000"}, true},
		{"utimeout then timeout", opRRQ, []option{{"utimeout", "30000"}, {"timeout", "2"}},
			map[string]string{"timeout": "2", "utimeout": "30000"}, false},
		{"utimeout 9999", opRRQ, []option{{"utimeout", "9999"}, {"blksize", "600"}}, map[string]string{"blksize": "600"}, false},
		{"utimeout 255000001", opRRQ, []option{{"utimeout", "255000001"}, {"blksize", "600"}}, map[string]string{"blksize": "600"}, false},
		{"upload utimeout 30000", opWRQ, []option{{"utimeout", "30000"}}, map[string]string{"utimeout": "30000"}, true},
		{"upload timeout 1", opWRQ, []option{{"timeout", "1"}}, map[string]string{"timeout": "1"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			oack, delay := oackResendDelay(t, ts.addr, c.op, "file", c.options)
			if !maps.Equal(oack, c.wantOACK) {
				t.Fatalf("OACK %v, want %v", oack, c.wantOACK)
			}
			// 30 ms against the first timeout of -t 3 (1 s for a
			// download, 3 s for an upload), timeout 2 or timeout 1.
			if fast := delay < 500*time.Millisecond; fast != c.fast {
				t.Fatalf("the OACK came again after %v; want a 30 ms timeout: %v", delay, c.fast)
			}
			ts.result(t)
		})
	}
	// A transfer with a utimeout runs to its end with the bytes exact.
	want := ts.writeFile(t, "data", 50_000)
	res, err := tftpGet(ts.addr, "data", clientOptions{blksize: 1000, extra: []option{{"utimeout", "100000"}}})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
	if r := ts.result(t); r.err != nil {
		t.Fatal(r.err)
	}
}

// TestPidFileWhileRunning: --pidfile holds the process ID once the server
// listens, and is gone after SIGTERM; the server serves meanwhile.
func TestPidFileWhileRunning(t *testing.T) {
	root := t.TempDir()
	want := randomBytes(3000, 1)
	if err := os.WriteFile(filepath.Join(root, "f"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(t.TempDir(), "r-tftpd.pid")
	cmd := exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", root, "--pidfile", pidFile)
	srv := startBinary(t, cmd)
	if got := string(readFile(t, pidFile)); got != strconv.Itoa(cmd.Process.Pid)+"\n" {
		t.Fatalf("pid file holds %q, want %d", got, cmd.Process.Pid)
	}
	res, err := tftpGet(srv.addr, "f", clientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
	cmd.Process.Signal(syscall.SIGTERM)
	if err := srv.wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Fatalf("pid file left after exit: %v", err)
	}
}

// TestUnwritablePidFileIsAStartupError: the server does not run without
// the pid file it was told to write.
func TestUnwritablePidFileIsAStartupError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", t.TempDir(),
		"--pidfile", filepath.Join(t.TempDir(), "no-such-folder", "pid"))
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 || strings.Count(string(out), "\n") != 1 ||
		!strings.HasPrefix(string(out), "r-tftpd: --pidfile: ") {
		t.Fatalf("exit %v, output %q; want status 1 and one line about --pidfile", err, out)
	}
}

// TestSeveralListenAddresses: each --listen address has its own socket,
// IPv4 and IPv6 mixed; a request is answered from the address it was sent
// to (in --single-port mode from that very socket), every client gets
// exact bytes, and an address not listed is not served.
func TestSeveralListenAddresses(t *testing.T) {
	for _, singlePort := range []bool{false, true} {
		t.Run("single-port="+strconv.FormatBool(singlePort), func(t *testing.T) {
			args := []string{"-l", "127.0.0.2", "-l", "::1"}
			if singlePort {
				args = append(args, "--single-port")
			}
			ts := startServer(t, "127.0.0.1", args...)
			if len(ts.addrs) != 3 {
				t.Fatalf("listening on %v, want three sockets", ts.addrs)
			}
			want := ts.writeFile(t, "file", 20_000)
			for _, addr := range ts.addrs {
				c := newRawClient(t, addr)
				c.send(clientOptions{}.requestPacket(opRRQ, "file"))
				first := c.recv()
				if blk, payload, ok := parseData(first); !ok || blk != 1 || !bytes.Equal(payload, want[:512]) {
					t.Fatalf("%v: got %q, want block 1", addr, first)
				}
				if c.peer.Addr() != addr.Addr() || singlePort && c.peer != addr {
					t.Fatalf("request to %v answered from %v", addr, c.peer)
				}
				c.send([]byte{0, opERROR, 0, 0, 0})
				ts.result(t)

				res, err := tftpGet(addr, "file", clientOptions{blksize: 1024, windowsize: 4})
				if err != nil {
					t.Fatalf("%v: %v", addr, err)
				}
				assertSame(t, res.data, want)
				if r := ts.result(t); r.err != nil {
					t.Fatal(r.err)
				}
			}
			// 127.0.0.3 at the port of 127.0.0.1's socket: nobody there,
			// the kernel refuses the datagram.
			unlisted := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.3"), ts.addr.Port())
			conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(unlisted))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.Write(clientOptions{}.requestPacket(opRRQ, "file"))
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := conn.Read(make([]byte, 1024)); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("a request to %v got %d bytes, %v; want it refused", unlisted, n, err)
			}
		})
	}
}

// TestUnbindableListenIsAStartupError: an address that is not the host's,
// or one given twice, is a one-line startup error, never a partial start.
func TestUnbindableListenIsAStartupError(t *testing.T) {
	probe, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(probe.LocalAddr().(*net.UDPAddr).Port)
	probe.Close()
	for _, args := range [][]string{
		{"-l", "127.0.0.1", "-l", "192.0.2.1", "-p", "0"},
		{"-l", "127.0.0.1", "-l", "127.0.0.1", "-p", port},
		{"-l", "192.0.2.1", "--interface", "lo", "-p", "0"},
		{"-l", "127.0.0.1", "--interface", "lo", "--interface", "lo", "-p", port},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cmd := exec.CommandContext(ctx, serverBinary, append(args, "-r", t.TempDir())...)
		out, err := cmd.CombinedOutput()
		cancel()
		if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 || strings.Count(string(out), "\n") != 1 ||
			!strings.HasPrefix(string(out), "r-tftpd: listen ") {
			t.Errorf("%q: exit %v, output %q; want status 1 and one line about the address", args, err, out)
		}
	}
}

// TestPortRange: every transfer answers from a port of --port-range, the
// OACK's source port included; with every port taken the next request gets
// ERROR 0 "server busy" from the listening port, and once one is free again
// a transfer takes it and delivers exact bytes.
func TestPortRange(t *testing.T) {
	// Below Linux's ephemeral ports (32768-60999), so no other socket
	// takes them by chance.
	const lo, hi = 20431, 20433
	inRange := func(p netip.AddrPort) bool { return p.Port() >= lo && p.Port() <= hi }
	ts := startServer(t, "127.0.0.1", "--port-range", fmt.Sprintf("%d:%d", lo, hi))
	want := ts.writeFile(t, "file", 5000)
	held := map[uint16]*rawClient{}
	for range hi - lo + 1 {
		c := newRawClient(t, ts.addr)
		c.send(clientOptions{blksize: 1000}.requestPacket(opRRQ, "file"))
		if oack := c.recv(); packetOp(oack) != opOACK || !inRange(c.peer) || held[c.peer.Port()] != nil {
			t.Fatalf("got %q from %v, want an OACK from a port of %d:%d not taken yet", oack, c.peer, lo, hi)
		}
		held[c.peer.Port()] = c
	}
	busy := newRawClient(t, ts.addr)
	busy.send(clientOptions{}.requestPacket(opRRQ, "file"))
	if pkt := busy.recv(); packetOp(pkt) != opERROR || *errorFromPacket(pkt) != *errBusy || busy.peer != ts.addr {
		t.Fatalf("got %q from %v, want ERROR %q from the listening port %v", pkt, busy.peer, errBusy.msg, ts.addr)
	}
	for _, c := range held {
		c.send([]byte{0, opERROR, 0, 0, 0})
		ts.result(t)
	}
	c := newRawClient(t, ts.addr)
	c.send(clientOptions{}.requestPacket(opRRQ, "file"))
	if blk, payload, ok := parseData(c.recv()); !ok || blk != 1 || !bytes.Equal(payload, want[:512]) || !inRange(c.peer) {
		t.Fatalf("block 1 from %v, want it from a port of %d:%d", c.peer, lo, hi)
	}
	c.send([]byte{0, opERROR, 0, 0, 0})
	ts.result(t)
	res, err := tftpGet(ts.addr, "file", clientOptions{blksize: 1000, windowsize: 2})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
	if r := ts.result(t); r.err != nil {
		t.Fatal(r.err)
	}
}

// procStatusIDs is the Uid, Gid and Groups lines of every thread of
// process pid, from /proc/PID/task/*/status.
func procStatusIDs(t *testing.T, pid int) []string {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("threads of %d: %v", pid, err)
	}
	var lines []string
	for _, status := range tasks {
		for _, line := range strings.Split(string(readFile(t, status)), "\n") {
			if strings.HasPrefix(line, "Uid:") || strings.HasPrefix(line, "Gid:") || strings.HasPrefix(line, "Groups:") {
				lines = append(lines, strings.Join(strings.Fields(line), " "))
			}
		}
	}
	return lines
}

// TestUserDropsPrivilegesOnEveryThread: with --user nobody every thread of
// the server has nobody's uid, gid and groups (real, effective, saved and
// filesystem), it still serves exact bytes, and binds its transfer sockets.
func TestUserDropsPrivilegesOnEveryThread(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root to drop privileges (CI=true)")
		}
		t.Skip("needs root to drop privileges")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	// nobody must be able to reach the served folder.
	for _, dir := range []string{filepath.Dir(root), root} {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	want := randomBytes(100_000, 3)
	if err := os.WriteFile(filepath.Join(root, "f"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(serverBinary, "-l", "127.0.0.1", "-l", "::1", "-p", "0", "-r", root, "--user", "nobody")
	srv := startBinary(t, cmd)
	res, err := tftpGet(srv.addr, "f", clientOptions{blksize: 1400, windowsize: 8})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
	wantLines := []string{
		"Uid: " + strings.Repeat(nobody.Uid+" ", 3) + nobody.Uid,
		"Gid: " + strings.Repeat(nobody.Gid+" ", 3) + nobody.Gid,
		"Groups: " + nobody.Gid,
	}
	lines := procStatusIDs(t, cmd.Process.Pid)
	for i, line := range lines {
		if line != wantLines[i%3] {
			t.Fatalf("thread status line %q, want %q (all: %q)", line, wantLines[i%3], lines)
		}
	}
	t.Logf("%d threads, each with %q", len(lines)/3, lines[:3])
	cmd.Process.Signal(syscall.SIGTERM)
	if err := srv.wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

// TestUnattainableUserIsAStartupError: a process that may not change
// its groups (here already nobody) does not run on as it is when told to
// become root; an unknown user, or --port-range below 1024 with --user,
// is refused before anything starts.
func TestUnattainableUserIsAStartupError(t *testing.T) {
	setpriv := needClient(t, "setpriv")
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a process as nobody")
	}
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The binary where nobody may run it.
	bin := filepath.Join(dir, "r-tftpd")
	if err := os.WriteFile(bin, readFile(t, serverBinary), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", bin, "--user", "root"}, 1,
			"r-tftpd: --user root: setgroups: operation not permitted\n"},
		{[]string{bin, "--user", "no-such-user-here"}, 2, "r-tftpd: --user \"no-such-user-here\": no such user (see --help)\n"},
		{[]string{bin, "--user", "nobody", "--port-range", "1000:2000"}, 2,
			"r-tftpd: --port-range 1000:2000 with --user: ports below 1024 need root, which the transfers no longer have (see --help)\n"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cmd := exec.CommandContext(ctx, c.args[0], append(c.args[1:], "-l", "127.0.0.1", "-p", "0", "-r", dir)...)
		out, _ := cmd.CombinedOutput()
		cancel()
		if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != c.code || string(out) != c.want {
			t.Errorf("%q: exit %v, %q; want %d, %q", c.args, cmd.ProcessState, out, c.code, c.want)
		}
	}
}

// TestRolloverOneKeepsAWindowsNumbersApart: with rollover 1 the numbers
// repeat every 65535 blocks, so a window is at most 65534 blocks; with
// rollover 0 it may be 65535.
func TestRolloverOneKeepsAWindowsNumbersApart(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "--max-windowsize", "65535", "--max-window-bytes", "1000000000")
	ts.writeFile(t, "file", 100)
	for _, c := range []struct{ rollover, wantWindow string }{{"1", "65534"}, {"0", "65535"}} {
		c1 := newRawClient(t, ts.addr)
		c1.send(clientOptions{blksize: 8, windowsize: 65535, extra: []option{{"rollover", c.rollover}}}.requestPacket(opRRQ, "file"))
		oack := c1.recv()
		if packetOp(oack) != opOACK || parseOACK(oack)["windowsize"] != c.wantWindow {
			t.Fatalf("rollover %s: got %q, want an OACK with windowsize %s", c.rollover, oack, c.wantWindow)
		}
		c1.send([]byte{0, opERROR, 0, 0, 0})
		ts.result(t)
	}
}

// TestUtimeoutAndRolloverAsTftpdHPA: Debian's tftpd-hpa (5.2) is the
// oracle for what the OACK says of utimeout and rollover, and for the
// numbering past block 65535 with rollover 1: the project's client fetches
// the same bytes from both, with the same OACK. Values out of range are
// not compared: 5.2 answers them with ERROR 8, 6.0 (and this server)
// leaves the option out.
func TestUtimeoutAndRolloverAsTftpdHPA(t *testing.T) {
	bin := needInTftpd(t)
	ts := startServer(t, "127.0.0.1")
	ts.writeFile(t, "big", 8*66_000+5)
	want := ts.writeFile(t, "small", 3000)
	rules := filepath.Join(t.TempDir(), "none.rules")
	if err := os.WriteFile(rules, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	hpa := startInTftpd(t, bin, netip.MustParseAddr("127.0.0.1"), rules, ts.root)
	for _, options := range [][]option{
		{{"utimeout", "10000"}}, {{"utimeout", "255000000"}}, {{"utimeout", "1e6"}},
		{{"timeout", "2"}, {"utimeout", "50000"}}, {{"rollover", "0"}}, {{"rollover", "1"}},
		{{"rollover", "1"}, {"blksize", "1000"}, {"utimeout", "200000"}},
	} {
		var oacks []map[string]string
		for _, server := range []netip.AddrPort{ts.addr, hpa} {
			res, err := tftpGet(server, "small", clientOptions{extra: options})
			if err != nil {
				t.Fatalf("%v from %v: %v", options, server, err)
			}
			assertSame(t, res.data, want)
			oacks = append(oacks, res.oack)
		}
		ts.result(t)
		if !maps.Equal(oacks[0], oacks[1]) {
			t.Errorf("%v: OACK %v, tftpd-hpa's %v", options, oacks[0], oacks[1])
		}
	}
	res, err := tftpGet(hpa, "big", clientOptions{blksize: 8, extra: []option{{"rollover", "1"}}})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, readFile(t, filepath.Join(ts.root, "big")))
	if res.numberAfter65535 != 1 {
		t.Fatalf("tftpd-hpa numbered the block after 65535 %d, the client took 1", res.numberAfter65535)
	}
}
