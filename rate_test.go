// Rate limits (--max-rate, --max-total-rate): a download keeps to its rate
// in lockstep and with windows, with the project's client and atftp; four
// at once share the total; a pacer's wait is never taken for a round trip
// or a loss; a paced window never goes past what the client agreed to; and
// the flags read K, M and G as 1024-based and refuse a rate below 1K.
package main

import (
	"bytes"
	"strconv"
	"sync"
	"testing"
	"time"
)

// rateTestSize is what each rate is measured over: 10 MiB.
const rateTestSize = 10 << 20

// rateAttempts bounds the runs of a rate measurement: a machine whose
// CPUs other work holds can stall a transfer past its retransmission
// timer, and the time lost then is the machine's, not the pacer's. Faster
// than the limit is never the machine's doing: it fails at once.
const rateAttempts = 3

// assertRateNear runs fetch, which moves bytes and checks them, until the
// rate it reached comes within 10% of limit bytes per second, at most
// rateAttempts times.
func assertRateNear(t *testing.T, what string, limit int64, fetch func() int) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		start := time.Now()
		n := fetch()
		elapsed := time.Since(start)
		rate := float64(n) / elapsed.Seconds()
		t.Logf("%s: %d bytes in %v: %.0f B/s, %.1f%% of the limit %d B/s", what, n, elapsed.Round(time.Millisecond), rate, 100*rate/float64(limit), limit)
		switch {
		case rate > 1.1*float64(limit):
			t.Fatalf("%s: %.0f B/s, over the limit of %d B/s by more than 10%%", what, rate, limit)
		case rate >= 0.9*float64(limit):
			return
		case attempt == rateAttempts:
			t.Fatalf("%s: %.0f B/s in each of %d runs, under the limit of %d B/s by more than 10%%", what, rate, attempt, limit)
		}
	}
}

// TestMaxRateHoldsInLockstepAndWindows: 10 MiB under --max-rate 2M arrive
// at 2 MiB/s within 10%, in lockstep (no windowsize) and with windowsize
// 16, from the project's client and from atftp.
func TestMaxRateHoldsInLockstepAndWindows(t *testing.T) {
	const limit = 2 << 20
	ts := startServer(t, "127.0.0.1", "--max-rate", "2M", "--log-level", "info")
	want := ts.writeFile(t, "big", rateTestSize)
	for _, c := range []struct {
		name       string
		windowsize int
	}{{"windowsize 1", 0}, {"windowsize 16", 16}} {
		t.Run(c.name, func(t *testing.T) {
			assertRateNear(t, c.name, limit, func() int {
				res, err := tftpGet(ts.addr, "big", clientOptions{blksize: 1468, windowsize: c.windowsize})
				if err != nil {
					t.Fatal(err)
				}
				assertSame(t, res.data, want)
				expectServedAtRate(t, ts, max(c.windowsize, 1))
				return len(res.data)
			})
		})
	}
	t.Run("atftp windowsize 16", func(t *testing.T) {
		c := interopCase{client: "atftp", name: "atftp", args: atftpArgs(opRRQ, "blksize 1468", "windowsize 16")}
		assertRateNear(t, "atftp", limit, func() int {
			got := fetchWithClient(t, c, "127.0.0.1", strconv.Itoa(int(ts.addr.Port())), "big")
			assertSame(t, got, want)
			expectServedAtRate(t, ts, 16)
			return len(got)
		})
	})
}

// expectServedAtRate fails unless the server's next finished transfer
// succeeded with the windowsize given; it logs what waited for the rate.
func expectServedAtRate(t *testing.T, ts *testServer, windowsize int) {
	t.Helper()
	r := ts.result(t)
	if r.err != nil || r.windowsize != windowsize {
		t.Fatalf("server: %v, windowsize %d, want %d", r.err, r.windowsize, windowsize)
	}
	t.Logf("server: paced %v, %d retransmits, %d timeouts", r.stats.paced.Round(time.Millisecond), r.stats.retransmits, r.stats.timeouts)
}

// TestMaxTotalRateIsSharedByFourTransfers: four downloads at once under
// --max-total-rate 2M move 2 MiB/s together, within 10%.
func TestMaxTotalRateIsSharedByFourTransfers(t *testing.T) {
	const limit, transfers = 2 << 20, 4
	ts := startServer(t, "127.0.0.1", "--max-total-rate", "2M", "--log-level", "info")
	want := ts.writeFile(t, "part", rateTestSize/transfers)
	assertRateNear(t, "four transfers together", limit, func() int {
		var wg sync.WaitGroup
		got := make([][]byte, transfers)
		errs := make([]error, transfers)
		took := make([]time.Duration, transfers)
		start := time.Now()
		for i := range transfers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := tftpGet(ts.addr, "part", clientOptions{blksize: 1468, windowsize: 16})
				took[i], errs[i] = time.Since(start), err
				if res != nil {
					got[i] = res.data
				}
			}()
		}
		wg.Wait()
		total := 0
		for i := range transfers {
			if errs[i] != nil {
				t.Fatalf("transfer %d: %v", i, errs[i])
			}
			assertSame(t, got[i], want)
			total += len(got[i])
			t.Logf("transfer %d: done after %v", i, took[i].Round(time.Millisecond))
			expectServedAtRate(t, ts, 16)
		}
		return total
	})
}

// TestPacingIsNotTakenForLoss: at 8 KiB/s a window of 4 blocks of 512
// waits a quarter second for its time, five times the retransmission
// timer's cap (-t 0.05), while the client repeats its ACK every 100 ms.
// The server neither times out nor resends, its round trip stays the
// loopback's, and the window of 8 asked for is lowered to 4, a quarter
// second of the rate.
func TestPacingIsNotTakenForLoss(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "--max-rate", "8K", "-t", "0.05")
	want := ts.writeFile(t, "slow", 16*1024)
	res, err := tftpGet(ts.addr, "slow", clientOptions{windowsize: 8})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
	r := ts.result(t)
	switch {
	case r.err != nil:
		t.Fatalf("server: %v", r.err)
	case r.windowsize != 4:
		t.Fatalf("windowsize %d granted, want 4: 2048 bytes, a quarter second at 8 KiB/s", r.windowsize)
	case r.stats.retransmits != 0 || r.stats.timeouts != 0:
		t.Fatalf("%d retransmits and %d timeouts on loopback without loss", r.stats.retransmits, r.stats.timeouts)
	case r.stats.paced < time.Second:
		t.Fatalf("paced %v, want about 2 s: 16 KiB at 8 KiB/s", r.stats.paced)
	case r.stats.rtt >= 125*time.Millisecond:
		t.Fatalf("round trip %v: the quarter-second waits for the rate were taken for it", r.stats.rtt)
	}
}

// TestPacedWindowIsNeverExceeded: while windows wait for their time at the
// rate, a client that ACKs a window late, repeats an old ACK, ACKs in the
// middle of a window or not at all until the timeout resends never gets a
// block past the window after the newest block it acknowledged.
func TestPacedWindowIsNeverExceeded(t *testing.T) {
	const window, blksize = 8, 512
	ts := startServer(t, "127.0.0.1", "--max-rate", "16K")
	want := ts.writeFile(t, "f", 40*blksize+100)
	p := newScriptedPeer(t, ts.addr, rrq("f", "octet", "windowsize", strconv.Itoa(window)))
	if oack := p.next(time.Second); len(oack) < 2 || oack[1] != opOACK || !bytes.Contains(oack, []byte("windowsize\x008\x00")) {
		t.Fatalf("got %q, want an OACK of windowsize 8", oack)
	}
	p.ack(0)
	var got []byte
	acked, have := uint16(0), uint16(0) // the newest block acknowledged, and received in order
	withheld := false
	for windows := 0; windows < 100; {
		pkt := p.next(5 * time.Second)
		if pkt == nil {
			t.Fatalf("no block after %d (acknowledged %d)", have, acked)
		}
		blk := p.dataBlock(pkt, want, blksize)
		if blk > acked+window {
			t.Fatalf("block %d sent with %d acknowledged and a window of %d", blk, acked, window)
		}
		if blk != have+1 {
			continue // a resend of a block already here
		}
		have = blk
		got = append(got, pkt[4:]...)
		final := len(pkt)-4 < blksize
		if have-acked < window && !final {
			continue
		}
		windows++
		switch {
		case final:
			p.ack(have)
			assertSame(t, got, want)
			if r := ts.result(t); r.err != nil {
				t.Fatalf("server: %v", r.err)
			}
			return
		case windows == 2:
			p.ack(acked) // a repeat of the ACK before the window
			acked = have - window/2
			p.ack(acked) // the middle of the window: the rest comes again
		case windows == 3 && !withheld:
			// No ACK: the tail-loss probe may repeat the window's last
			// block, then the timeout resends the window, in its time.
			withheld = true
			for resent, reads := uint16(0), 0; resent != acked+1; reads++ {
				if reads == 2*window {
					t.Fatalf("no resend of block %d after the timeout", acked+1)
				}
				if resent = p.dataBlock(p.next(5*time.Second), want, blksize); resent > acked+window {
					t.Fatalf("block %d resent with %d acknowledged and a window of %d", resent, acked, window)
				}
			}
			acked = have
			p.ack(acked)
		default:
			acked = have
			p.ack(acked)
		}
	}
	t.Fatal("the transfer did not end within 100 windows")
}

// TestPacerKeepsToItsRate: windows booked back to back leave one window's
// time at the rate apart; a pacer left idle lets the next window leave at
// once with at most paceSlack saved up; the shared pacer books every
// transfer's windows one after another.
func TestPacerKeepsToItsRate(t *testing.T) {
	const rate, n = 1 << 20, 1 << 14 // a window of n takes 1/64 s
	step := time.Second / 64
	now := time.Now()
	p := newRatePacer(rate)
	first := p.book(n, now)
	if !first.Equal(now.Add(-paceSlack)) {
		t.Fatalf("an idle pacer lets bytes leave at %v, want %v (now less the slack)", first.Sub(now), -paceSlack)
	}
	for i := 1; i < 10; i++ {
		if at := p.book(n, now); !at.Equal(first.Add(time.Duration(i) * step)) {
			t.Fatalf("window %d leaves at %v after the first, want %v", i, at.Sub(first), time.Duration(i)*step)
		}
	}
	later := now.Add(time.Minute)
	if at := p.book(n, later); !at.Equal(later.Add(-paceSlack)) {
		t.Fatalf("after a minute idle a window leaves at %v, want the slack, %v", at.Sub(later), -paceSlack)
	}
	// Windows of a quarter second at the total rate: the first leaves at
	// once, the others each a quarter second after the one before,
	// whichever transfer booked it.
	mine := pacing{own: newRatePacer(4 * rate), total: newRatePacer(rate)}
	other := pacing{total: mine.total}
	quarter := time.Second / 4
	if at := mine.departure(rate/4, later); at.After(later) {
		t.Fatalf("the first window waits %v", at.Sub(later))
	}
	second, third := other.departure(rate/4, later), mine.departure(rate/4, later)
	if d := third.Sub(second); !second.After(later) || d != quarter {
		t.Fatalf("the total rate's windows leave %v and %v later, want a quarter second apart", second.Sub(later), third.Sub(later))
	}
	if (pacing{}).limited() || newRatePacer(0) != nil {
		t.Fatal("no rate limit set, yet pacing is on")
	}
}

// TestRateFlags: K, M and G are 1024-based, and --help says so; a rate
// below 1K, or not a rate, is a one-line startup error.
func TestRateFlags(t *testing.T) {
	var help bytes.Buffer
	if code := run([]string{"--help"}, &help, &help); code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	for _, s := range []string{"--max-rate", "--max-total-rate", "1024-based"} {
		if !bytes.Contains(help.Bytes(), []byte(s)) {
			t.Errorf("--help does not mention %s", s)
		}
	}
	cfg, err := parseFlags([]string{"-r", t.TempDir(), "--max-rate", "3M", "--max-total-rate", "1K"}, nil)
	if err != nil || cfg.maxRate != 3<<20 || cfg.maxTotalRate != 1024 {
		t.Fatalf("--max-rate 3M --max-total-rate 1K: %+v, %v", cfg, err)
	}
	for _, args := range [][]string{
		{"--max-rate", "1023"}, {"--max-rate", "fast"}, {"--max-rate", "0"},
		{"--max-total-rate", "-1K"}, {"--max-total-rate", "1.5M"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 2 || bytes.Count(stderr.Bytes(), []byte("\n")) != 1 {
			t.Errorf("%q: exit %d, %q; want 2 and one line", args, code, stderr.String())
		}
	}
}
