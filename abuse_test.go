// Tests of the server under a hostile or broken client: the connection
// limits, a shutdown that no client can hold up, and a log that junk cannot
// flood.
package main

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// openSockets counts the sockets a process holds, from /proc.
func openSockets(t *testing.T, pid int) int {
	t.Helper()
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	fds, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	sockets := 0
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join(dir, fd.Name())); err == nil && strings.HasPrefix(target, "socket:") {
			sockets++
		}
	}
	return sockets
}

// TestConnectionLimitHoldsAgainstPortReuse: one socket sends request after
// request, alternating between two names, and never ACKs. Each new request
// from the same port ends the transfer it replaces, so the server never
// holds more transfers than --max-connections, and a client that then takes
// the free slot is served.
func TestConnectionLimitHoldsAgainstPortReuse(t *testing.T) {
	root := t.TempDir()
	want := randomBytes(100*512, 71)
	for _, name := range []string{"a", "b"} {
		if err := os.WriteFile(filepath.Join(root, name), want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const limit = 2
	srv := startBinary(t, exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", root,
		"-m", strconv.Itoa(limit), "-t", "5", "--retries", "6"))
	base := openSockets(t, srv.cmd.Process.Pid)
	hostile, err := dialClient(srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer hostile.Close()
	busy, lastAdmitted := 0, false
	buf := make([]byte, 2048)
	for i := range 40 {
		// Each request asks its own blksize, so its answer (an OACK, or
		// ERROR busy from the listening port) is told apart from any
		// resend of an earlier transfer's, whatever port that came from.
		blksize := strconv.Itoa(100 + i)
		if _, err := hostile.WriteToUDPAddrPort(rrq([]string{"a", "b"}[i%2], "octet", "blksize", blksize), srv.addr); err != nil {
			t.Fatal(err)
		}
		hostile.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			n, from, err := hostile.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("no answer to request %d: %v", i+1, err)
			}
			if unmap(from) == srv.addr && n >= 2 && buf[1] == opERROR {
				lastAdmitted = false
				break
			}
			if n >= 2 && buf[1] == opOACK && parseOACK(buf[:n])["blksize"] == blksize {
				lastAdmitted = true
				break
			}
		}
		if !lastAdmitted {
			busy++
		}
		// Each running transfer has a socket, and at most one more
		// while it looks up its interface's MTU.
		if n := openSockets(t, srv.cmd.Process.Pid) - base; n > 2*limit {
			t.Fatalf("after %d requests from one port the server holds %d more sockets, want at most %d", i+1, n, 2*limit)
		}
	}
	if busy == 40 {
		t.Fatal("every request from the port was refused")
	}
	// Each admitted transfer was ended by the request after it: once those
	// are gone, the port holds one transfer at most and a second client fits.
	ended := 40 - busy
	if lastAdmitted {
		ended--
	}
	for range ended {
		srv.awaitLog(t, "transfer left for a new request")
	}
	res, err := tftpGet(srv.addr, "a", clientOptions{blksize: 1468})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
}

// TestMaxPerClientCapsOneAddress: with --max-per-client 2, a third transfer
// from one address is refused as busy while another address is served, and
// the address is served again once its transfers end.
func TestMaxPerClientCapsOneAddress(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "-m", "10", "--max-per-client", "2", "-t", "5")
	want := ts.writeFile(t, "f", 50*512)
	var hogs []*scriptedPeer
	for range 2 {
		p := newScriptedPeer(t, ts.addr, rrq("f", "octet"))
		p.dataBlock(p.next(5*time.Second), want, 512)
		hogs = append(hogs, p)
	}
	_, err := tftpGet(ts.addr, "f", clientOptions{maxRetries: 1})
	var we *wireError
	if !errors.As(err, &we) || !strings.Contains(we.msg, "busy") {
		t.Fatalf("a third transfer from the address got %v, want a busy ERROR", err)
	}
	// Another loopback address is another client.
	otherConn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Fatal(err)
	}
	other := newScriptedPeerOn(t, otherConn, ts.addr, rrq("f", "octet"))
	other.dataBlock(other.next(5*time.Second), want, 512)
	for _, p := range append(hogs, other) {
		p.abort()
	}
	for range 3 {
		ts.result(t)
	}
	res, err := tftpGet(ts.addr, "f", clientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
}

// TestShutdownEndsWaitsOnSilentClients: a client that took a block and
// went silent holds its transfer for --retries times --timeout (here 30 s);
// a shutdown ends it when the grace is over, in either socket mode, and
// tells the client why.
func TestShutdownEndsWaitsOnSilentClients(t *testing.T) {
	for _, mode := range [][]string{nil, {"--single-port"}} {
		t.Run(strings.Join(append([]string{"ports"}, mode...), ""), func(t *testing.T) {
			ts := startServer(t, "127.0.0.1", append([]string{"-t", "5", "--retries", "6"}, mode...)...)
			want := ts.writeFile(t, "f", 50*512)
			p := newScriptedPeer(t, ts.addr, rrq("f", "octet"))
			p.dataBlock(p.next(5*time.Second), want, 512)
			const grace = 200 * time.Millisecond
			start := time.Now()
			ts.shutdown(grace)
			if took := time.Since(start); took > grace+shutdownStraggle {
				t.Fatalf("shutdown took %v, want at most the grace and %v", took, shutdownStraggle)
			}
			for range 10 {
				pkt := p.next(time.Second)
				if pkt == nil {
					t.Fatal("the client was not told of the shutdown")
				}
				if pkt[1] == opERROR {
					if we := errorFromPacket(pkt); we.msg != errShutdown.msg {
						t.Fatalf("ERROR %q, want %q", we.msg, errShutdown.msg)
					}
					break
				}
			}
			if r := ts.result(t); !errors.Is(r.err, errShutdown) {
				t.Fatalf("session ended with %v, want the shutdown error", r.err)
			}
		})
	}
}

// TestSIGTERMExitsWithinGraceWhateverTheClients: the binary, a client that
// went silent after one block, SIGTERM: the process exits within the 10 s
// grace and a second.
func TestSIGTERMExitsWithinGraceWhateverTheClients(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	want := randomBytes(50*512, 72)
	if err := os.WriteFile(filepath.Join(root, "f"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	srv := startBinary(t, exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", root, "-t", "5", "--retries", "6"))
	p := newScriptedPeer(t, srv.addr, rrq("f", "octet"))
	p.dataBlock(p.next(5*time.Second), want, 512)
	start := time.Now()
	srv.cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- srv.wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
		t.Logf("exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	case <-time.After(shutdownGrace + shutdownStraggle + time.Second):
		t.Fatalf("still running %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	}
}

// TestJunkCannotFloodTheLog: a burst of malformed requests with long names
// and refused requests writes a few lines, none long, and a summary of what
// was kept from the log; a name longer than the file system allows gets a
// clear ERROR 1; the server serves exact bytes afterwards.
func TestJunkCannotFloodTheLog(t *testing.T) {
	root := t.TempDir()
	want := randomBytes(3000, 73)
	if err := os.WriteFile(filepath.Join(root, "f"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	srv := startBinary(t, exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", root))
	junk, err := dialClient(srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer junk.Close()
	longName := strings.Repeat("x", 1000)
	for i := range 2000 {
		var pkt []byte
		switch i % 3 {
		case 0:
			pkt = rrq(longName, "bogus-mode")
		case 1:
			pkt = append([]byte{0, opRRQ}, longName...) // no NUL
		default:
			pkt = []byte{0, 9, 'x'}
		}
		if _, err := junk.WriteToUDPAddrPort(pkt, srv.addr); err != nil {
			t.Fatal(err)
		}
	}
	asker, err := dialClient(srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer asker.Close()
	// The junk may still fill the listener's buffer: ask until answered.
	var reply []byte
	buf := make([]byte, 2048)
	for try := 0; reply == nil && try < 20; try++ {
		if _, err := asker.WriteToUDPAddrPort(rrq(strings.Repeat("n", 65000), "octet"), srv.addr); err != nil {
			t.Fatal(err)
		}
		asker.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if n, _, err := asker.ReadFromUDPAddrPort(buf); err == nil {
			reply = buf[:n]
		}
	}
	if we := errorFromPacket(reply); we == nil || we.code != codeNotFound || we.msg != errNameTooLong.msg {
		t.Fatalf("a 65000-byte name got %q, want ERROR 1 %q", reply, errNameTooLong.msg)
	}
	res, err := tftpGet(srv.addr, "f", clientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
	srv.cmd.Process.Signal(syscall.SIGTERM)
	summary := srv.awaitLog(t, "bad requests and refusals suppressed")
	if err := srv.wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	if !strings.Contains(summary, "addresses=1") {
		t.Errorf("summary %q, want one address", summary)
	}
	if lines, bytes := srv.logLines.Load(), srv.logBytes.Load(); lines > 20 || bytes > 8000 {
		t.Errorf("2000 junk datagrams wrote %d log lines, %d bytes", lines, bytes)
	}
	if longest := srv.longestLine.Load(); longest > 1024 {
		t.Errorf("a log line of %d bytes", longest)
	}
}

// TestLogTextIsCut: a long name is logged cut, with its length.
func TestLogTextIsCut(t *testing.T) {
	if got := logText("boot/pxelinux.0"); got != "boot/pxelinux.0" {
		t.Fatalf("short name logged as %q", got)
	}
	long := string(bytes.Repeat([]byte("ab"), 1000))
	got := logText(long)
	if !strings.HasPrefix(got, long[:maxLoggedText]) || !strings.HasSuffix(got, "(2000 bytes)") || len(got) > maxLoggedText+20 {
		t.Fatalf("long name logged as %q", got)
	}
}

// TestDelayedCopyOfTheRequestDoesNotEndTheTransfer: a copy of the request
// that the network delayed (or the client's own retry that crossed the first
// block) reaches the listener after the client has answered. It is the same
// request, not a new one: the transfer runs on and no second one starts.
// Once the final block is out, the same request is a new fetch.
func TestDelayedCopyOfTheRequestDoesNotEndTheTransfer(t *testing.T) {
	ts := startServer(t, "127.0.0.1")
	want := ts.writeFile(t, "f", 10*512+3)
	req := rrq("f", "octet")
	p := newScriptedPeer(t, ts.addr, req)
	got := []byte{}
	var transfer netip.AddrPort
	for blk := uint16(1); blk <= 11; {
		pkt := p.next(5 * time.Second)
		if pkt == nil {
			t.Fatalf("nothing after block %d", blk-1)
		}
		if blk == 1 {
			transfer = p.server
		}
		if p.server != transfer {
			t.Fatalf("block %d came from %v, the transfer is %v: a second transfer started", blk, p.server, transfer)
		}
		if n := p.dataBlock(pkt, want, 512); n == blk-1 {
			p.ack(n) // a resend that crossed the ACK on a busy machine
			continue
		} else if n != blk {
			t.Fatalf("want block %d, got block %d", blk, n)
		}
		got = append(got, pkt[4:]...)
		p.ack(blk)
		if blk == 1 {
			// The delayed copy, from the same port to the listener. It
			// must be taken while the transfer runs: a listener slow to
			// read it (-race, a busy machine) took it once the final
			// block was out, when the same request is a new fetch.
			if _, err := p.conn.WriteToUDPAddrPort(req, ts.addr); err != nil {
				t.Fatal(err)
			}
			ts.awaitLog(t, "retransmitted request ignored", 5*time.Second)
		}
		blk++
	}
	assertSame(t, got, want)
	if r := ts.result(t); r.err != nil {
		t.Fatalf("session: %v", r.err)
	}
	// Fetching it again from the same port starts a new transfer at once.
	if _, err := p.conn.WriteToUDPAddrPort(req, ts.addr); err != nil {
		t.Fatal(err)
	}
	for {
		pkt := p.next(5 * time.Second)
		if pkt == nil {
			t.Fatal("a second fetch got no answer")
		}
		if p.server == transfer {
			continue // a late repeat of the final block
		}
		if n := p.dataBlock(pkt, want, 512); n != 1 {
			t.Fatalf("a second fetch got block %d, want block 1", n)
		}
		break
	}
	p.abort()
}
