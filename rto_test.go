// The retransmit timer and the window's limits: the RTO follows RFC 6298,
// a spurious timeout and a needless tail-loss probe each raise their floor,
// a pausing client is waited for and a vanished one told, a repeated ACK
// resumes a transfer and endless ones end it, the window is a hard limit,
// and real clients recover from loss without resend cascades.
package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
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

// TestSpuriousTimeoutRaisesTheFloor: an ACK that comes sooner after a
// resend than half the fastest round trip answers the earlier copy (Eifel):
// its delay is a round trip this receiver takes, and the timer's floor rises
// to twice it, so later fast samples cannot bring the timer under it again.
func TestSpuriousTimeoutRaisesTheFloor(t *testing.T) {
	e := newRTOEstimator(3 * time.Second)
	for range 20 {
		e.sample(time.Millisecond)
	}
	if e.rto != minRTO {
		t.Fatalf("RTO on a 1ms link %v, want the %v floor", e.rto, minRTO)
	}
	if !e.answersEarlierCopy(100*time.Microsecond) || e.answersEarlierCopy(600*time.Microsecond) {
		t.Fatal("an ACK within half the fastest round trip (0.5ms) after a resend must, and only that, answer the earlier copy")
	}
	e.spurious(35 * time.Millisecond)
	for range 50 {
		e.sample(time.Millisecond)
	}
	if e.floor != 70*time.Millisecond || e.rto != 70*time.Millisecond {
		t.Fatalf("floor %v, RTO %v after a 35ms spurious timeout and fast samples, want both 70ms", e.floor, e.rto)
	}
	e.spurious(10 * time.Second)
	if e.floor != 3*time.Second {
		t.Fatalf("floor %v, want the 3s cap", e.floor)
	}
}

// TestPausingClientIsNotDropped: a client that goes silent in the middle
// (U-Boot writing flash) for longer than all of the server's fast
// retransmissions is waited for: the server falls silent after --retries
// timeouts and takes the client's ACK when it comes, within the patience.
// The client pauses until the server has fallen silent, which it can tell:
// no timer of the server runs longer than the cap, -t, so a copy that has
// not come within the cap and a margin will not come.
func TestPausingClientIsNotDropped(t *testing.T) {
	const retries, timeoutCap = 3, 2 * time.Second
	ts := startServer(t, "127.0.0.1", "-t", "2", "--retries", strconv.Itoa(retries))
	want := ts.writeFile(t, "f", 20*512)
	conn, err := dialClient(ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.WriteToUDPAddrPort(rrq("f", "octet"), ts.addr)
	buf := make([]byte, 1024)
	// pause reads the copies of block blk until the server falls silent.
	pause := func(blk uint16) {
		for copies := 0; copies < 20; copies++ {
			conn.SetReadDeadline(time.Now().Add(timeoutCap + 300*time.Millisecond))
			m, _, err := conn.ReadFromUDPAddrPort(buf)
			if isTimeout(err) {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if buf[1] == opERROR {
				t.Fatalf("server gave up during the pause: %q", buf[4:m])
			}
			if got := uint16(buf[2])<<8 | uint16(buf[3]); got != blk {
				t.Fatalf("block %d during the pause at block %d", got, blk)
			}
		}
		t.Fatalf("the server kept resending block %d", blk)
	}
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
					pause(blk)
				}
				conn.WriteToUDPAddrPort([]byte{0, opACK, byte(blk >> 8), byte(blk)}, from)
				break
			}
		}
		if n-4 < 512 {
			break
		}
	}
	assertSame(t, got, want)
	r := ts.result(t)
	if r.err != nil || r.stats.timeouts <= retries {
		t.Fatalf("session: %v with %d timeouts; want success after more timeouts than --retries", r.err, r.stats.timeouts)
	}
}

// TestVanishedClientGetsTimeoutError: a client that takes the first block
// and falls silent, its port open (firmware that stopped, or a host gone
// from the network), holds its slot for the patience.
func TestVanishedClientGetsTimeoutError(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "-t", "0.3", "--retries", "5")
	want := ts.writeFile(t, "f", 100*512)
	p := newScriptedPeer(t, ts.addr, rrq("f", "octet"))
	p.dataBlock(p.next(2*time.Second), want, 512)
	start := time.Now()
	r := ts.result(t)
	if !errors.Is(r.err, errTimeout) {
		t.Fatalf("session ended with %v, want the timeout error", r.err)
	}
	if r.stats.timeouts <= 5 {
		t.Fatalf("%d timeouts, want more than --retries", r.stats.timeouts)
	}
	// Its slot is held for --retries times --timeout of silence, not less
	// and not much more.
	patience := 5 * 300 * time.Millisecond
	if took := time.Since(start); took < patience-100*time.Millisecond || took > patience+2*time.Second {
		t.Fatalf("the vanished client held its slot %v, want about %v", took.Round(time.Millisecond), patience)
	}
}

// TestClosedClientPortEndsTheTransfer: a client that exits closes its
// port, and the ICMP port unreachable that the next copy draws ends the
// transfer at once, in the middle of the file (a client killed) and with
// the final block in flight (its final ACK was lost), on both kinds of
// transfer socket. Without it, the first would hold its slot for the
// patience and the second for the final block's 7 s.
func TestClosedClientPortEndsTheTransfer(t *testing.T) {
	onBothTransferSockets(t, func(t *testing.T) {
		ts := startServer(t, "127.0.0.1", "-t", "3")
		want := ts.writeFile(t, "f", 3*512+100)
		for _, lastTaken := range []uint16{1, 4} {
			p := newScriptedPeer(t, ts.addr, rrq("f", "octet"))
			for blk := uint16(1); blk <= lastTaken; blk++ {
				if got := p.dataBlock(p.next(2*time.Second), want, 512); got != blk {
					t.Fatalf("block %d, want %d", got, blk)
				}
				if blk < lastTaken {
					p.ack(blk)
				}
			}
			p.conn.Close()
			closed := time.Now()
			r := ts.result(t)
			if !errors.Is(r.err, errClientGone) {
				t.Fatalf("block %d taken, the port closed: session ended with %v, want %v", lastTaken, r.err, errClientGone)
			}
			// The first copy goes within the timer's cap (its first
			// timeout is 1 s before a round trip was measured).
			if took := time.Since(closed); took > 2*time.Second {
				t.Fatalf("block %d taken, the port closed: the transfer held its slot %v", lastTaken, took.Round(time.Millisecond))
			}
		}
	})
}

// TestClientLackingTheFinalBlockAsksAgain: a lockstep client whose copies
// of the final block were all lost asks again on its own timer, after the
// server fell silent: atftp waits 5 s. The server still has the transfer
// and sends the final block at once; it used to give up 620 ms after the
// client's last packet, and atftp got "timed out waiting for the client"
// (TestRealClientsRecoverFromLoss, with a yes per core).
func TestClientLackingTheFinalBlockAsksAgain(t *testing.T) {
	const retries = 2
	ts := startServer(t, "127.0.0.1", "-t", "2", "--retries", strconv.Itoa(retries))
	want := ts.writeFile(t, "f", 3*512+100)
	p := newScriptedPeer(t, ts.addr, rrq("f", "octet"))
	for blk := uint16(1); blk <= 3; blk++ {
		if got := p.dataBlock(p.next(2*time.Second), want, 512); got != blk {
			t.Fatalf("block %d, want %d", got, blk)
		}
		p.ack(blk)
	}
	// Block 4, the final one, and its copies are taken for lost until the
	// server falls silent, and for 1.5 s of silence more.
	if copies := p.copiesUntilSilent(want, 4, 2*time.Second); copies < 1+retries {
		t.Fatalf("block 4 sent %d times before the server fell silent, want at least %d", copies, 1+retries)
	}
	if pkt := p.next(1500 * time.Millisecond); pkt != nil {
		t.Fatalf("%q from a silent server", pkt)
	}
	p.ack(3)
	pkt := p.next(2 * time.Second)
	if pkt == nil {
		t.Fatal("no answer to the repeated ACK 3")
	}
	got := append([]byte(nil), want[:3*512]...)
	if blk := p.dataBlock(pkt, want, 512); blk != 4 {
		t.Fatalf("block %d after the repeated ACK 3, want 4", blk)
	}
	got = append(got, pkt[4:]...)
	p.ack(4)
	assertSame(t, got, want)
	if r := ts.result(t); r.err != nil {
		t.Fatalf("session: %v", r.err)
	}
}

// TestRepeatedAckAfterTimeoutsResumes: a client that missed a block and
// let the server's resends go by (as U-Boot, busy writing flash, does)
// repeats its last ACK on its own timer. The server, silent by then, sends
// the missing block again at once, and the transfer completes.
func TestRepeatedAckAfterTimeoutsResumes(t *testing.T) {
	const retries = 2
	ts := startServer(t, "127.0.0.1", "-t", "2", "--retries", strconv.Itoa(retries))
	want := ts.writeFile(t, "f", 3*512+100)
	p := newScriptedPeer(t, ts.addr, rrq("f", "octet"))
	p.dataBlock(p.next(5*time.Second), want, 512)
	p.ack(1)
	// Block 2, first sent and then resent on each timeout, is ignored
	// until the server falls silent: its resends come within a fraction
	// of a second, its patience lasts --retries times -t, 4 s.
	if copies := p.copiesUntilSilent(want, 2, 5*time.Second); copies < 1+retries {
		t.Fatalf("block 2 sent %d times before the server fell silent, want at least %d", copies, 1+retries)
	}
	// The repeated ACK must bring block 2 before the patience runs out.
	p.ack(1)
	pkt := p.next(2 * time.Second)
	if pkt == nil || pkt[1] != opDATA {
		t.Fatalf("after a repeated ACK 1: %q, want block 2 at once", pkt)
	}
	got := append([]byte(nil), want[:512]...)
	for blk := p.dataBlock(pkt, want, 512); ; blk = p.dataBlock(p.next(5*time.Second), want, 512) {
		if start := int(blk-1) * 512; start == len(got) {
			got = append(got, want[start:min(start+512, len(want))]...)
		}
		p.ack(blk)
		if int(blk)*512 > len(want) {
			break
		}
	}
	assertSame(t, got, want)
	if r := ts.result(t); r.err != nil {
		t.Fatalf("session: %v", r.err)
	}
}

// TestRealClientsRecoverFromLoss runs each real client through the lossy
// relay (5% loss, 1% duplicated, 1% delayed 2 ms). The server resends long
// before the clients' own timers fire: early resends must not confuse them.
func TestRealClientsRecoverFromLoss(t *testing.T) {
	cases := []interopCase{
		{"curl", "curl", curlArgs(opRRQ, "--tftp-blksize", "1468"), 1468, 1},
		{"tftp", "tftp-hpa", tftpHPAArgs(opRRQ, false), 512, 1},
		{"atftp", "atftp window 1", func(h, p, r, l string) []string { return append([]string{"--trace"}, atftpArgs(opRRQ)(h, p, r, l)...) }, 512, 1},
		{"atftp", "atftp window 8", atftpArgs(opRRQ, "windowsize 8"), 512, 8},
		{"atftp", "atftp window 16", atftpArgs(opRRQ, "windowsize 16"), 512, 16},
		{"busybox", "busybox", busyboxArgs(opRRQ, 1468), 1468, 1},
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
	c := interopCase{"atftp", "atftp window 16", atftpArgs(opRRQ, "windowsize 16"), 512, 16}
	assertSame(t, fetchWithClient(t, c, host, port, "f"), want)
	assertResendsBounded(t, relay, ts.result(t), c.windowsize, 1)
}

// TestWindowIsAHardLimit: a window client that stops answering gets the
// window's last block once more (the tail-loss probe), then one block on
// each timeout, its oldest and its newest in turn (U-Boot's virtio-net dies
// when 33 frames arrive unread), never a block past the window. A client
// without windowsize likewise never gets a block past the one it has to ACK.
func TestWindowIsAHardLimit(t *testing.T) {
	// The timer never runs longer than the cap, -t: a copy that has not
	// come within it and a margin for a busy machine will not come. The
	// cap is long beside the timers a busy machine's round trips make, so
	// the resends end well inside the patience (--retries times -t).
	const timeoutCap = 3 * time.Second
	quiet := timeoutCap + 300*time.Millisecond
	ts := startServer(t, "127.0.0.1", "-t", "3", "--retries", "3")
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
		for reads := 0; len(order) < 40 && reads < 60; reads++ {
			// The resends come within a fraction of a second on a quiet
			// machine (2, 4, 8 ms), within the cap on a busy one.
			pkt := p.next(quiet)
			if pkt == nil {
				break // silent: waiting for the client's own timer
			}
			blk := p.dataBlock(pkt, want, 512)
			if blk <= 4 && len(order) == 0 {
				// On a busy machine ACK 4 can come late enough for the
				// probe of block 4 to cross it: a resend within the
				// window, sent before the server saw the ACK.
				continue
			}
			if blk < 5 || blk > 8 {
				t.Fatalf("block %d sent with blocks 1-4 acknowledged and a window of 4 (so far %v)", blk, order)
			}
			order = append(order, blk)
		}
		// The window, its last block again, then the oldest and the newest
		// block in turn, one per timeout, before the server falls silent:
		// a client silent since the window went out may hold it all unread. --retries
		// counts 3 of them; those that fired under minWindowRTO come on
		// top, at most one per doubling from minRTO up to it (none when a
		// busy machine's round trip set the timer above it).
		quick := 0
		for rto := minRTO; rto < minWindowRTO; rto *= 2 {
			quick++
		}
		resends := order[min(5, len(order)):]
		inTurn := true
		for i, blk := range resends {
			inTurn = inTurn && blk == []uint16{5, 8}[i%2]
		}
		if fmt.Sprint(order[:min(5, len(order))]) != "[5 6 7 8 8]" || len(resends) < 3 || len(resends) > 3+quick || !inTurn {
			t.Fatalf("blocks %v, want the window, the probe of 8, then blocks 5 and 8 in turn, one per timeout (3 to %d in all)", order, 3+quick)
		}
		p.ack(8)
		if got := p.dataBlock(p.next(time.Second), want, 512); got != 9 {
			t.Fatalf("after ACK 8 came block %d, want 9", got)
		}
		p.abort()
	})

	t.Run("lockstep client", func(t *testing.T) {
		p := newScriptedPeer(t, ts.addr, rrq("f", "octet"))
		p.dataBlock(p.next(time.Second), want, 512)
		p.ack(1)
		// The resends of block 2 come within a fraction of a second, then
		// the server falls silent for the client's timer.
		sends := 0
		for range 8 {
			pkt := p.next(time.Second)
			if pkt == nil || pkt[1] == opERROR {
				break
			}
			if blk := p.dataBlock(pkt, want, 512); blk != 2 {
				t.Fatalf("block %d sent before block 2 was acknowledged", blk)
			}
			sends++
		}
		if sends < 2 {
			t.Fatalf("block 2 sent %d times, want it resent when its ACK did not come", sends)
		}
		p.abort()
	})
}

// TestRepeatedAcksWithoutProgressEndTheTransfer: a client that keeps
// repeating its ACK while the blocks resent for it never arrive gets the
// window once per repeat until --retries times -t pass without progress,
// then ERROR 0: the session does not live on.
//
// The client repeats only once the server has fallen silent, and the
// server's copies before that take as long as its timer makes them: block
// 1's round trip sets it, and on a machine busy enough to make that round
// trip a quarter of a second, the copies alone outlast the patience and
// the server rightly ends with "timed out waiting for the client" before
// any repeat. Such a run says nothing either way, so it is run again, up
// to three times in all.
func TestRepeatedAcksWithoutProgressEndTheTransfer(t *testing.T) {
	const attempts = 3
	for attempt := 1; attempt <= attempts; attempt++ {
		if repeatAcksWithoutProgress(t) {
			return
		}
		t.Logf("attempt %d: the server's copies of block 2 took most of the patience before the client could repeat; again", attempt)
	}
	t.Fatalf("in %d attempts the server's timer never left the client time to repeat: the machine is too busy for this test", attempts)
}

// repeatAcksWithoutProgress runs the scenario once, and reports false when
// the server fell silent too late for the client's repeats to matter.
func repeatAcksWithoutProgress(t *testing.T) bool {
	// The cap is long beside the timers a busy machine's round trips make,
	// so the copies of block 2 usually end well inside the patience.
	const retries, timeoutCap = 3, time.Second
	patience := retries * timeoutCap
	ts := startServer(t, "127.0.0.1", "-t", "1", "--retries", strconv.Itoa(retries))
	want := ts.writeFile(t, "f", 10*512)
	p := newScriptedPeer(t, ts.addr, rrq("f", "octet"))
	p.dataBlock(p.next(5*time.Second), want, 512)
	// Taken before the ACK goes out: the server's own clock for the
	// patience starts when the ACK arrives, later.
	progress := time.Now()
	p.ack(1)
	// The server's timer never runs longer than the cap, so a copy that has
	// not come within the cap and a margin for a busy machine will not
	// come: the server has fallen silent. The margin stays well under the
	// patience (retries × cap) left after a repeat, so a client that
	// repeats after each quiet spell is never taken for a silent one.
	quiet := timeoutCap + 300*time.Millisecond
	// awaitSilence reads block 2's copies until the server falls silent,
	// and returns how many came, or -1 for the ERROR that ends the
	// transfer: no progress, or, before any repeat, a timeout.
	awaitSilence := func(ending *wireError) int {
		copies := 0
		for pkt := p.next(5 * time.Second); pkt != nil && copies < 20; pkt = p.next(quiet) {
			if pkt[1] == opERROR {
				if we := errorFromPacket(pkt); we.code != ending.code || we.msg != ending.msg {
					t.Fatalf("ERROR %q, want ERROR %d %q", pkt, ending.code, ending.msg)
				}
				return -1
			}
			if blk := p.dataBlock(pkt, want, 512); blk != 2 {
				t.Fatalf("block %d, want 2", blk)
			}
			copies++
		}
		return copies
	}
	// The first send, the tail-loss probe, one per timeout.
	copies := awaitSilence(errTimeout)
	if took := time.Since(progress); copies == -1 && took < patience {
		t.Fatalf("ERROR %q after %v, before the patience of %v", errTimeout.msg, took.Round(time.Millisecond), patience)
	}
	if copies == -1 || time.Since(progress) > patience-timeoutCap/2 {
		if r := ts.result(t); !errors.Is(r.err, errTimeout) {
			t.Fatalf("session ended with %v after a silent client, want %v", r.err, errTimeout)
		}
		return false
	}
	if copies != 2+retries {
		t.Fatalf("block 2 sent %d times before the server fell silent, want %d", copies, 2+retries)
	}
	repeats := 0
	for ; repeats < 20; repeats++ {
		p.ack(1)
		copies := awaitSilence(errNoProgress)
		if copies == -1 {
			break
		}
		if copies != 1 {
			t.Fatalf("a repeated ACK brought %d copies of block 2, want 1", copies)
		}
	}
	if took := time.Since(progress); repeats == 20 || took < patience {
		t.Fatalf("ERROR after %d repeats and %v without progress, want it after %v", repeats, took.Round(time.Millisecond), patience)
	}
	if r := ts.result(t); !errors.Is(r.err, errNoProgress) {
		t.Fatalf("session ended with %v, want %v", r.err, errNoProgress)
	}
	return true
}

// TestNeedlessProbesRaiseTheProbeFloor: a lockstep client that answers
// most blocks at once but now and then only after some milliseconds (a boot
// ROM on an emulated NIC), and ACKs a repeated block again, shows the server
// that its probe was needless: the probe then waits longer than the client
// took, and the answers after it that take no longer get no probe. The
// lesson comes at block 2, the first block a probe can follow, and is the
// slowest answer by far (250 ms, the later ones 8 ms), so a busy machine's
// scheduling delays neither hide it nor make a later answer slower. It must
// come before the first timeout: an ACK after one may be the client's own
// timer's and teaches nothing. Block 1's answer, 100 ms, the first round
// trip, sets the probe at twice that and the timeout at three times. What counts is the probes the server
// sent, from its own figures: every retransmission here is a probe or a
// timeout's resend of the one block in flight, and timeouts are the
// retransmission timer's business, not the probe's.
func TestNeedlessProbesRaiseTheProbeFloor(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "-t", "2")
	const blocks, lessonBlock, slowEvery = 60, 2, 6
	want := ts.writeFile(t, "f", blocks*512+100)
	p := newScriptedPeer(t, ts.addr, rrq("f", "octet"))
	lesson := 0 // repeats the client saw of the lesson's block
	for blk := uint16(1); blk <= blocks+1; {
		pkt := p.next(5 * time.Second)
		if pkt == nil {
			t.Fatalf("nothing after block %d", blk-1)
		}
		got := p.dataBlock(pkt, want, 512)
		if got == blk-1 {
			// A repeat: ACK it again, as U-Boot and tftp-hpa do.
			if got == lessonBlock {
				lesson++
			}
			p.ack(got)
			continue
		}
		if got != blk {
			t.Fatalf("block %d, want %d", got, blk)
		}
		switch {
		case blk == 1:
			time.Sleep(100 * time.Millisecond) // the client's slowness, not a wait for an event
		case blk == lessonBlock:
			time.Sleep(250 * time.Millisecond)
		case blk%slowEvery == 0:
			time.Sleep(8 * time.Millisecond)
		}
		p.ack(blk)
		blk++
	}
	r := ts.result(t)
	if r.err != nil {
		t.Fatalf("session: %v", r.err)
	}
	// 11 slow answers: the lesson's probe is needless and teaches the
	// server; a probe for every later one would be 10 more.
	probes := r.stats.retransmits - r.stats.timeouts
	if lesson < 1 || probes > 3 {
		t.Fatalf("the client saw %d repeats of block %d, and the server sent %d probes in all (%d retransmits, %d timeouts); want the lesson's probe and at most two more",
			lesson, lessonBlock, probes, r.stats.retransmits, r.stats.timeouts)
	}
}

// TestClientTimerIsLearned: a lockstep client that ignores repeated blocks
// and restarts its own timer on each, as busybox does, ACKs only once the
// server's copies pause for its timer's span. Once one such ACK showed the
// span, a lost ACK costs two copies and the client's timer, not a series of
// copies that each put it off again.
func TestClientTimerIsLearned(t *testing.T) {
	// Long beside a busy machine's round trips, which must stay under a
	// quarter of it for the span to count as the client's timer.
	const clientTimer = 150 * time.Millisecond
	ts := startServer(t, "127.0.0.1", "-t", "3")
	want := ts.writeFile(t, "f", 10*512)
	p := newScriptedPeer(t, ts.addr, rrq("f", "octet"))
	take := func(blk uint16, wait time.Duration) bool {
		pkt := p.next(wait)
		if pkt == nil {
			return false
		}
		if got := p.dataBlock(pkt, want, 512); got != blk {
			t.Fatalf("block %d, want %d", got, blk)
		}
		return true
	}
	// ackLost takes block blk, loses its ACK, then counts the copies that
	// come before a pause of clientTimer, and ACKs.
	ackLost := func(blk uint16) int {
		if !take(blk, 5*time.Second) {
			t.Fatalf("no block %d", blk)
		}
		copies := 0
		for copies < 20 && take(blk, clientTimer) {
			copies++
		}
		p.ack(blk)
		return copies
	}
	for blk := uint16(1); blk <= 4; blk++ {
		if !take(blk, 5*time.Second) {
			t.Fatalf("no block %d", blk)
		}
		p.ack(blk) // round trips measured
	}
	first := ackLost(5)
	second := ackLost(6)
	if second > 2 {
		t.Fatalf("after the client's timer showed itself (%d copies of block 5), block 6 was sent %d more times before the client's own resend, want at most 2", first, second)
	}
	for blk := uint16(7); blk <= 10; blk++ {
		if !take(blk, 5*time.Second) {
			t.Fatalf("no block %d", blk)
		}
		p.ack(blk)
	}
	if !take(11, 5*time.Second) {
		t.Fatal("no block 11, the empty one after 10 full blocks")
	}
	p.ack(11)
	t.Logf("copies of block 5: %d, of block 6: %d", first, second)
}

// sentPackets is a transferConn that keeps what the sender sends and has
// nothing to read: a test drives the sender's events by hand.
type sentPackets struct{ packets [][]byte }

func (c *sentPackets) send(b []byte) error {
	c.packets = append(c.packets, append([]byte(nil), b...))
	return nil
}

func (c *sentPackets) sendBatch(b []byte, segSize int) (int, error) {
	for len(b) > 0 {
		n := min(segSize, len(b))
		c.send(b[:n])
		b = b[n:]
	}
	return 1, nil
}

func (c *sentPackets) recv([]byte, time.Time, time.Time) (int, error) {
	return 0, os.ErrDeadlineExceeded
}
func (c *sentPackets) answerStrays()             {}
func (c *sentPackets) maxInbound() int           { return 1 }
func (c *sentPackets) localAddr() netip.AddrPort { return netip.AddrPort{} }
func (c *sentPackets) close() error              { return nil }

// blocks checks every packet sent against source (blksize 512) and returns
// their block numbers in order.
func (c *sentPackets) blocks(t *testing.T, source []byte) []uint16 {
	t.Helper()
	var order []uint16
	for _, pkt := range c.packets {
		blk := uint16(pkt[2])<<8 | uint16(pkt[3])
		start := (int(blk) - 1) * 512
		assertSame(t, pkt[4:], source[start:min(start+512, len(source))])
		order = append(order, blk)
	}
	return order
}

// handDrivenSender is a sender of source (blksize 512) in windows of
// window blocks, whose events the test hands it one by one; what it sends
// is kept in the sentPackets returned. It has sent nothing yet.
func handDrivenSender(t *testing.T, source []byte, window int) (*sender, *sentPackets) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, source, 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := openLocal(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	conn := &sentPackets{}
	w := newSender(conn, src, transferParams{blksize: 512, windowsize: window, timeout: 2 * time.Second}, nil, 5, pacing{}, nil)
	w.base, w.next = 1, 1
	w.lastHeard = w.readClock() // as run begins
	w.lastProgress = w.now
	return w, conn
}

// TestRecoveredLossesLowerTheProbeFloor: a floor that late answers raised
// halves with each probe that answered a loss (its block's ACK came once,
// and the next block's followed), so a few late answers early on do not
// make every later loss wait as long. A probe the client answers twice
// (it had the block) raises the floor again, and does not lower it.
func TestRecoveredLossesLowerTheProbeFloor(t *testing.T) {
	want := randomBytes(10*512+100, 3)
	w, conn := handDrivenSender(t, want, 1)
	if err := w.sendFrom(1, false); err != nil {
		t.Fatal(err)
	}
	w.rto.sample(100 * time.Microsecond)
	const lesson = 40 * time.Millisecond
	w.rto.needlessProbe(lesson)
	ack := func(blk uint16) {
		t.Helper()
		w.readClock()
		if _, err := w.onAck(blk); err != nil {
			t.Fatal(err)
		}
	}
	probe := func() {
		t.Helper()
		w.readClock()
		if err := w.onProbe(); err != nil {
			t.Fatal(err)
		}
	}
	// Blocks 1 to 4 are each lost once and recovered by the probe.
	floors := []time.Duration{}
	for blk := uint16(1); blk <= 4; blk++ {
		probe()
		ack(blk)
		floors = append(floors, w.rto.probeFloor)
	}
	// The ACK of block 1 follows no probed ACK; each later one does.
	if wantFloors := []time.Duration{lesson, lesson / 2, lesson / 4, lesson / 8}; !slices.Equal(floors, wantFloors) {
		t.Fatalf("probe floors after each recovered loss %v, want %v", floors, wantFloors)
	}
	// Block 5's probe was needless: the client ACKs the block twice. Its
	// first ACK, which halves the floor for block 4's probe, came sooner
	// than the floor, which stays where it was: the ACK of block 6 after
	// the repeat does not halve it.
	probe()
	ack(5)
	ack(5)
	ack(6)
	if w.rto.probeFloor != lesson/16 {
		t.Fatalf("probe floor %v after a needless probe, want %v as before it", w.rto.probeFloor, lesson/16)
	}
	// What went out: each block, its probe's copy, and block 7.
	if order, wantOrder := conn.blocks(t, want), []uint16{1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7}; !slices.Equal(order, wantOrder) {
		t.Fatalf("blocks sent %v, want %v", order, wantOrder)
	}
}

// TestAckAfterATimeoutTeachesNoRoundTrip: after a timeout, a window
// client's ACK of a block sent once may come from its own timer, long after
// the block (its gap report was lost, and it ignored the copies). That span
// is no round trip: taken as one, it set the timer to 185 ms and, through a
// repeat of that ACK, the probe's floor to 345 ms, for the rest of a lossy
// transfer. The blocks and their copies here went out 100 ms before the ACK.
func TestAckAfterATimeoutTeachesNoRoundTrip(t *testing.T) {
	want := randomBytes(10*512+100, 4)
	const rtt = 100 * time.Microsecond
	// stalled sends a window of 4, its probe (block 4) and a timeout's copy
	// (block 1), all 100 ms ago, and then takes the client's ACKs.
	stalled := func(t *testing.T, acks ...uint16) (*sender, []uint16) {
		w, conn := handDrivenSender(t, want, 4)
		for _, event := range []func() error{func() error { return w.sendFrom(1, false) }, w.onProbe, w.onTimeout} {
			w.readClock()
			if err := event(); err != nil {
				t.Fatal(err)
			}
			if w.next == 5 && !w.rto.sampled {
				w.rto.sample(rtt) // the round trips before this window
			}
		}
		for i := range w.sends {
			w.sends[i].at -= 100 * time.Millisecond
			w.sends[i].earlier -= 100 * time.Millisecond
		}
		for _, blk := range acks {
			w.readClock()
			if _, err := w.onAck(blk); err != nil {
				t.Fatal(err)
			}
		}
		return w, conn.blocks(t, want)
	}
	t.Run("gap report", func(t *testing.T) {
		// It had blocks 1 to 3 and reports the gap at 4.
		w, order := stalled(t, 3)
		if w.rto.srtt != rtt || w.rto.rto != minRTO {
			t.Fatalf("smoothed round trip %v, timer %v; want %v and the %v floor", w.rto.srtt, w.rto.rto, rtt, minRTO)
		}
		if wantOrder := []uint16{1, 2, 3, 4, 4, 1}; !slices.Equal(order[:6], wantOrder) {
			t.Fatalf("blocks sent %v, want %v first", order, wantOrder)
		}
	})
	t.Run("repeated ACK", func(t *testing.T) {
		// It had all four, and its ACK comes twice (a copy, or its answer
		// to the probe's).
		w, order := stalled(t, 4, 4)
		if w.rto.srtt != rtt || w.rto.probeFloor != 0 {
			t.Fatalf("smoothed round trip %v, probe floor %v; want %v and none", w.rto.srtt, w.rto.probeFloor, rtt)
		}
		if wantOrder := []uint16{1, 2, 3, 4, 4, 1, 5, 6, 7, 8}; !slices.Equal(order, wantOrder) {
			t.Fatalf("blocks sent %v, want %v", order, wantOrder)
		}
	})
}

// TestWindowBufferFitsTheFile: a file smaller than a window gets a buffer
// of its own blocks (the final empty one too), a larger file the whole
// window; and a file that grew after it was opened goes out, lockstep and
// windowed, as long as it was then, the size a tsize would have told.
func TestWindowBufferFitsTheFile(t *testing.T) {
	for _, c := range []struct{ size, slots int }{{0, 1}, {1000, 2}, {1024, 3}, {20 * 512, 16}} {
		w, _ := handDrivenSender(t, randomBytes(c.size, 5), 16)
		if len(w.blocks) != c.slots || len(w.batch) != c.slots*(4+512) {
			t.Fatalf("file of %d bytes: %d blocks in a buffer of %d bytes, want %d", c.size, len(w.blocks), len(w.batch), c.slots)
		}
	}
	grown := randomBytes(40*512+100, 6)
	for _, window := range []int{1, 16} {
		w, conn := handDrivenSender(t, grown[:1000], window)
		if err := os.WriteFile(w.src.(*fileSource).Name(), grown, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := w.sendFrom(1, false); err != nil {
			t.Fatal(err)
		}
		if window == 1 {
			w.readClock()
			if _, err := w.onAck(1); err != nil {
				t.Fatal(err)
			}
		}
		if n, err := w.src.ReadAt(make([]byte, 512), 900); n != 100 || err != io.EOF {
			t.Fatalf("grown file: ReadAt at 900 gave %d bytes, %v; want the 100 it had then and EOF", n, err)
		}
		order := conn.blocks(t, grown[:1000])
		if !slices.Equal(order, []uint16{1, 2}) || w.last != 2 || len(conn.packets[1]) != 4+1000-512 {
			t.Fatalf("window %d, file grown after the open: blocks %v (final %d, %d bytes), want 1 and 2 of the 1000 bytes it had", window, order, w.last, len(conn.packets[len(conn.packets)-1])-4)
		}
	}
}
