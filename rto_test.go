package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

func TestRTOEstimatorFollowsRFC6298(t *testing.T) {
	e := newRTOEstimator(3 * time.Second)
	if e.rto != time.Second {
		t.Fatalf("initial RTO %v, want 1s", e.rto)
	}
	if e := newRTOEstimator(200 * time.Millisecond); e.rto != 200*time.Millisecond {
		t.Fatalf("initial RTO %v, want the 200ms cap", e.rto)
	}
	e.backoff()
	e.resetBackoff() // progress without a sample: every ACK answered a resend
	if e.rto != time.Second {
		t.Fatalf("RTO after a backoff and progress without a sample %v, want the initial 1s", e.rto)
	}
	e.sample(100 * time.Millisecond) // SRTT 100ms, RTTVAR 50ms
	if e.rto != 300*time.Millisecond {
		t.Fatalf("RTO after first sample %v, want 100ms + 4*50ms", e.rto)
	}
	e.sample(100 * time.Millisecond) // RTTVAR 37.5ms
	if e.rto != 250*time.Millisecond {
		t.Fatalf("RTO after second sample %v, want 100ms + 4*37.5ms", e.rto)
	}
	for range 100 {
		e.sample(50 * time.Microsecond)
	}
	if e.rto < minRTO || e.rto > minRTO+time.Millisecond {
		t.Fatalf("RTO on a 50µs link %v, want about the %v floor", e.rto, minRTO)
	}
	for range 20 {
		e.backoff()
	}
	if e.rto != 3*time.Second {
		t.Fatalf("RTO after backoff %v, want the 3s cap", e.rto)
	}
}

func TestPausingClientIsNotDropped(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "-t", "1", "--retries", "3")
	want := ts.writeFile(t, "f", 20*512)
	conn, err := dialClient(ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.WriteToUDPAddrPort(rrq("f", "octet"), ts.addr)
	buf := make([]byte, 1024)
	var got []byte
	for blk := uint16(1); ; blk++ {
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		var n int
		for {
			m, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("waiting for block %d: %v", blk, err)
			}
			if buf[1] == opERROR {
				t.Fatalf("server gave up: %q", buf[4:m])
			}
			if uint16(buf[2])<<8|uint16(buf[3]) == blk {
				n = m
				got = append(got, buf[4:n]...)
				if blk == 10 {
					// Like U-Boot writing flash: silent for longer than
					// several fast retransmissions, shorter than -t.
					time.Sleep(600 * time.Millisecond)
				}
				conn.WriteToUDPAddrPort([]byte{0, opACK, buf[2], buf[3]}, from)
				break
			}
		}
		if n-4 < 512 {
			break
		}
	}
	assertSame(t, got, want)
	r := ts.result(t)
	if r.err != nil || r.stats.timeouts <= 3 {
		t.Fatalf("session: %v with %d timeouts; want success after more timeouts than --retries", r.err, r.stats.timeouts)
	}
}

func TestVanishedClientGetsTimeoutError(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "-t", "0.3", "--retries", "5")
	ts.writeFile(t, "f", 100*512)
	// The client takes the first block and is gone.
	if reply := exchange(t, ts.addr, rrq("f", "octet"), 2*time.Second); len(reply) < 4 || reply[1] != opDATA {
		t.Fatalf("reply %q, want DATA", reply)
	}
	r := ts.result(t)
	if !errors.Is(r.err, errTimeout) {
		t.Fatalf("session ended with %v, want the timeout error", r.err)
	}
	if r.stats.timeouts <= 5 {
		t.Fatalf("%d timeouts, want more than --retries", r.stats.timeouts)
	}
}

// TestRealClientsRecoverFromLoss runs each real client through the lossy
// relay (5% loss, 1% duplicated, 1% delayed 2 ms). The server resends long
// before the clients' own timers fire: early resends must not confuse them.
func TestRealClientsRecoverFromLoss(t *testing.T) {
	cases := []interopCase{
		{"curl", "curl", curlArgs("--tftp-blksize", "1468"), 1468, 1},
		{"tftp", "tftp-hpa", tftpHPAArgs, 512, 1},
		{"atftp", "atftp window 1", func(h, p, r, l string) []string { return append([]string{"--trace"}, atftpArgs()(h, p, r, l)...) }, 512, 1},
		{"atftp", "atftp window 8", atftpArgs("windowsize 8"), 512, 8},
		{"atftp", "atftp window 16", atftpArgs("windowsize 16"), 512, 16},
		{"busybox", "busybox", busyboxArgs(1468), 1468, 1},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ts := startServer(t, "127.0.0.1", "-t", "3")
			want := ts.writeFile(t, "f", 300_000)
			relay := startRelay(t, ts.addr, impairment{loss: 0.05, duplicate: 0.01, delay: 0.01, seed: int64(i + 1)})
			host, port := relay.addr().Addr().String(), strconv.Itoa(int(relay.addr().Port()))
			start := time.Now()
			assertSame(t, fetchWithClient(t, c, host, port, "f"), want)
			elapsed := time.Since(start)
			t.Logf("%s took %v", c.name, elapsed.Round(time.Millisecond))
			// busybox and atftp answer a repeated block at most once: a
			// lost ACK then costs the probe and every fast resend
			// (--retries, 5) before the server falls silent.
			assertResendsBounded(t, relay, ts.result(t), c.windowsize, 6)
		})
	}
}

// TestLateDuplicatesDoNotCascade: atftp answers a block it already has with
// an ACK of its newest block, which looks like a gap report in the middle of
// the window. Resending at once for each of those, on a path that only
// duplicates and delays, made every resent copy provoke the next ACK and
// cost five times the file in resends.
func TestLateDuplicatesDoNotCascade(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "-t", "3")
	want := ts.writeFile(t, "f", 2_000_000)
	relay := startRelay(t, ts.addr, impairment{duplicate: 0.02, delay: 0.02, seed: 7})
	host, port := relay.addr().Addr().String(), strconv.Itoa(int(relay.addr().Port()))
	c := interopCase{"atftp", "atftp window 16", atftpArgs("windowsize 16"), 512, 16}
	assertSame(t, fetchWithClient(t, c, host, port, "f"), want)
	assertResendsBounded(t, relay, ts.result(t), c.windowsize, 1)
}

// scriptedPeer is a client whose every packet the test writes by hand.
type scriptedPeer struct {
	t      *testing.T
	conn   *net.UDPConn
	server netip.AddrPort // the transfer's port once the first reply came
	buf    []byte
}

func newScriptedPeer(t *testing.T, listener netip.AddrPort, request []byte) *scriptedPeer {
	conn, err := dialClient(listener)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := conn.WriteToUDPAddrPort(request, listener); err != nil {
		t.Fatal(err)
	}
	return &scriptedPeer{t: t, conn: conn, buf: make([]byte, 2048)}
}

// next returns the next packet from the server, or nil after wait.
func (p *scriptedPeer) next(wait time.Duration) []byte {
	p.conn.SetReadDeadline(time.Now().Add(wait))
	n, from, err := p.conn.ReadFromUDPAddrPort(p.buf)
	if isTimeout(err) {
		return nil
	}
	if err != nil {
		p.t.Fatal(err)
	}
	p.server = unmap(from)
	return p.buf[:n]
}

// abort ends the session with an ERROR, as a client that gives up does.
func (p *scriptedPeer) abort() {
	p.conn.WriteToUDPAddrPort([]byte{0, opERROR, 0, 0, 'e', 'n', 'o', 'u', 'g', 'h', 0}, p.server)
}

func (p *scriptedPeer) ack(blk uint16) {
	if _, err := p.conn.WriteToUDPAddrPort([]byte{0, opACK, byte(blk >> 8), byte(blk)}, p.server); err != nil {
		p.t.Fatal(err)
	}
}

// dataBlock checks that pkt is DATA with the source's bytes for its block
// number, and returns that number.
func (p *scriptedPeer) dataBlock(pkt, source []byte, blksize int) uint16 {
	p.t.Helper()
	if len(pkt) < 4 || pkt[1] != opDATA {
		p.t.Fatalf("got %q, want DATA", pkt)
	}
	blk := uint16(pkt[2])<<8 | uint16(pkt[3])
	start := (int(blk) - 1) * blksize
	assertSame(p.t, pkt[4:], source[start:min(start+blksize, len(source))])
	return blk
}

// TestProbeAhead: when a window's ACK is late, a client that negotiated
// windowsize gets the window's last block again and then the block after
// it, so a client that only answers a repeat once still moves on. A client
// without windowsize never gets a block past the one it has to ACK.
func TestProbeAhead(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "-t", "2")
	want := ts.writeFile(t, "f", 40*512)

	t.Run("window client", func(t *testing.T) {
		p := newScriptedPeer(t, ts.addr, rrq("f", "octet", "windowsize", "4"))
		if oack := p.next(time.Second); len(oack) < 2 || oack[1] != opOACK {
			t.Fatalf("got %q, want OACK", oack)
		}
		p.ack(0)
		for blk := uint16(1); blk <= 4; blk++ {
			if got := p.dataBlock(p.next(time.Second), want, 512); got != blk {
				t.Fatalf("block %d, want %d", got, blk)
			}
		}
		p.ack(4) // a measured round trip arms the probe
		var order []uint16
		for len(order) < 6 {
			pkt := p.next(time.Second)
			if pkt == nil {
				t.Fatalf("after %v, nothing more within a second", order)
			}
			order = append(order, p.dataBlock(pkt, want, 512))
		}
		// The window 5..8, its last block again, then block 9 ahead.
		if fmt.Sprint(order) != "[5 6 7 8 8 9]" {
			t.Fatalf("blocks %v, want the window, the repeat of 8, then 9", order)
		}
		p.ack(9)
		if got := p.dataBlock(p.next(time.Second), want, 512); got != 10 {
			t.Fatalf("after ACK 9 came block %d, want 10", got)
		}
		p.abort()
	})

	t.Run("lockstep client", func(t *testing.T) {
		p := newScriptedPeer(t, ts.addr, rrq("f", "octet"))
		p.dataBlock(p.next(time.Second), want, 512)
		p.ack(1)
		// The resends of block 2 come within milliseconds, then the
		// server falls silent for the client's timer.
		for range 8 {
			pkt := p.next(time.Second)
			if pkt == nil || pkt[1] == opERROR {
				break
			}
			if blk := p.dataBlock(pkt, want, 512); blk != 2 {
				t.Fatalf("block %d sent before block 2 was acknowledged", blk)
			}
		}
		p.abort()
	})
}
