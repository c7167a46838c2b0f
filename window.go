// The RFC 7440 engines: the sender runs a read transfer, the receiver a
// write, each an event machine with one method per event and its next
// deadline computed from its state. The window is the receiver's limit: no
// block past it is ever sent, and resends are paced by a retransmission
// timer with a floor, so a slow receiver (a boot ROM, an emulated NIC with a
// small ring) is never sent more than it agreed to take.
// With --max-rate or --max-total-rate the sender paces whole windows: a
// window leaves when its bytes' time has come at the rate, never by
// sending past the window; without either, pacing costs one nil check.
// The sender keeps block numbers, not copies: every block, first send or
// resend, is read by offset from the source into one session-owned window
// buffer, each behind its 4-byte header, and the blocks due leave as one
// batch (see batch.go). The OACK is block 0 of the same loop. The
// per-window path allocates nothing and memory stays one window per transfer.
package main

import (
	"errors"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// source is whatever is served. It is read by offset, fills a window's
// blocks at once (a local file in one preadv, anything else block by
// block), and knows its size or knows it does not know it yet (Size
// returns -1).
type source interface {
	io.ReaderAt
	// readBlocks fills blocks, each one block's place in the window
	// buffer, with the bytes from off on. It returns how many bytes it
	// read (fewer than the blocks hold only at the end of the source) and
	// how many reads that took.
	readBlocks(off int64, blocks [][]byte) (n, calls int, err error)
	Size() int64
	Close() error
}

// readBlocksAt is readBlocks for a source read by offset, one block a call.
func readBlocksAt(r io.ReaderAt, off int64, blocks [][]byte) (n, calls int, err error) {
	for _, b := range blocks {
		calls++
		got, err := r.ReadAt(b, off+int64(n))
		n += got
		if err != nil && !errors.Is(err, io.EOF) {
			return n, calls, err
		}
		if got < len(b) {
			break
		}
	}
	return n, calls, nil
}

// uploadSink takes a WRQ's body: each block in order, commit after the final
// block and before its ACK, abort when the transfer fails. summary gives
// the upload's fields for the session's log line.
type uploadSink interface {
	write(p []byte) error
	commit() error
	abort()
	summary() []any
}

// transferProgress is what a running engine shows outside its goroutine:
// the listener, SIGUSR1's list of running transfers and the metrics read
// it. The engine stores it once per window, never per packet.
type transferProgress struct {
	// finalBlock is set once the final block went out (a read) or came in
	// (a write): the listener then takes the same request again as a new
	// transfer.
	finalBlock atomic.Bool
	// bytes is the payload moved so far, as transferStats counts it.
	bytes atomic.Int64
	// blksize and windowsize are the transfer's, once negotiated.
	blksize, windowsize atomic.Int32
	// first is the engine's first reply while the client has not answered it.
	first firstReply
}

// firstReply holds a transfer's first reply (the OACK, DATA 1 or ACK 0)
// from its send until the client answers it. A repeat of the request in that
// time says the reply, or the request, was lost, and the listener sends the
// reply again at once (repeat): the engine's own timer would wait a second,
// RFC 6298's first timeout while no round trip is known, and iPXE asks again
// after a quarter of one, busybox sooner still. A repeat that comes within
// minClientTimer of the latest copy is no client's timer but a copy the
// network made or a request that crossed the reply, and draws nothing.
type firstReply struct {
	mu   sync.Mutex
	conn transferConn
	pkt  []byte // nil when there is nothing to resend
	// sentAt is when the latest copy went out; copies counts the
	// listener's copies, which make the client's answer ambiguous (Karn).
	sentAt time.Time
	copies int
}

// offer holds pkt, sent through conn at sentAt, for the listener to resend;
// pkt is copied, as the engine reuses its buffers.
func (f *firstReply) offer(conn transferConn, pkt []byte, sentAt time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conn, f.pkt, f.sentAt = conn, append([]byte(nil), pkt...), sentAt
}

// withdraw ends the offer, when the client has answered or the engine ends
// (before the connection is closed), and returns the listener's copies.
func (f *firstReply) withdraw() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conn, f.pkt = nil, nil
	return f.copies
}

// resent notes a copy the engine's own timer sent at sentAt.
func (f *firstReply) resent(sentAt time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sentAt = sentAt
}

// repeat answers a repeat of the request that came at now: it sends the
// first reply again, if it is still unanswered and the latest copy went
// out minClientTimer ago, and reports whether it did.
func (f *firstReply) repeat(now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pkt == nil || now.Sub(f.sentAt) < minClientTimer {
		return false
	}
	f.sentAt = now
	f.copies++
	_ = f.conn.send(f.pkt) // lost like any copy; the engine's timer still runs
	return true
}

// begin shows the negotiated block and window size.
func (p *transferProgress) begin(tp transferParams) {
	if p != nil {
		p.blksize.Store(int32(tp.blksize))
		p.windowsize.Store(int32(tp.windowsize))
	}
}

// transferStats counts what an engine did.
type transferStats struct {
	bytes       int64
	retransmits int
	timeouts    int
	rtt         time.Duration // smoothed round-trip time, when measured
	// dataCalls counts the system calls that read and sent DATA blocks:
	// batching makes it a fraction of the blocks.
	dataCalls int
	// completed is when the final ACK of an upload went out: the receiver
	// lingers after it, and that time is no part of the transfer's rate.
	completed time.Time
	// paced is how long windows waited for their time at the rate.
	paced time.Duration
}

// Retransmission timer bounds, by what the timer resends. A timeout and the
// tail-loss probe resend one block, so their floors are low: a lost packet
// on a LAN should cost about a round trip and a millisecond, and one block
// more is within any window. The probe's floor is half a millisecond: on
// loopback, where a round trip takes 20-40 µs, a 1 ms floor was most of what
// a lockstep loss cost, and a late ACK that makes a probe needless raises
// the floor for that client (needlessProbe). A whole window again is sent at
// most once per minWindowRTO: window resends a few milliseconds apart
// overran U-Boot on an emulated NIC, whose answers come late now and then.
// The first timeout is RFC 6298's 1 s (or the cap, when that is lower) until
// a round trip has been measured.
const (
	minRTO       = 2 * time.Millisecond
	minWindowRTO = 20 * time.Millisecond
	minProbe     = 500 * time.Microsecond
	initialRTO   = time.Second
)

// rtoEstimator is RFC 6298's retransmission timer: a smoothed round-trip
// time and its variation give the timeout, doubled on each consecutive
// timeout, never below floor nor above limit (the --timeout or the
// negotiated timeout). A spurious timeout raises the floor.
type rtoEstimator struct {
	srtt, rttvar time.Duration
	minRTT       time.Duration // the fastest round trip measured
	rto, limit   time.Duration
	floor        time.Duration
	// probeFloor is the longest a probed block's ACK took when the probe
	// proved needless: the probe waits at least that long from then on.
	probeFloor time.Duration
	// clientTimer is the shortest retry timer the client was seen to run
	// (see clientTimed), 0 until then.
	clientTimer time.Duration
	sampled     bool
}

func newRTOEstimator(limit time.Duration) rtoEstimator {
	return rtoEstimator{rto: min(initialRTO, limit), limit: limit, floor: min(minRTO, limit)}
}

func (e *rtoEstimator) sample(r time.Duration) {
	if !e.sampled {
		e.srtt, e.rttvar, e.minRTT, e.sampled = r, r/2, r, true
	} else {
		diff := e.srtt - r
		if diff < 0 {
			diff = -diff
		}
		e.rttvar = (3*e.rttvar + diff) / 4
		e.srtt = (7*e.srtt + r) / 8
		e.minRTT = min(e.minRTT, r)
	}
	e.resetBackoff()
}

func (e *rtoEstimator) backoff() { e.rto = min(2*e.rto, e.limit) }

// answersEarlierCopy reports whether an ACK that came sinceResend after a
// block was resent must answer an earlier copy of it: it came sooner than
// half the fastest round trip ever measured.
func (e *rtoEstimator) answersEarlierCopy(sinceResend time.Duration) bool {
	return e.sampled && sinceResend < e.minRTT/2
}

// spurious takes the ACK of a block resent too early, r after its earlier
// copy went out (Eifel, RFC 3522): r is a round trip this receiver does
// take, so it is a sample, and the floor rises to twice it, so the timer
// does not fire before this receiver again.
func (e *rtoEstimator) spurious(r time.Duration) {
	e.floor = min(max(e.floor, 2*r), e.limit)
	e.sample(r)
}

// probeTimeout is when a tail-loss probe goes out: twice the smoothed round
// trip, at least minProbe, and only when that is sooner than the timeout
// itself.
func (e *rtoEstimator) probeTimeout() (time.Duration, bool) {
	pto := max(2*e.srtt, minProbe, e.probeFloor)
	return pto, e.sampled && pto < e.rto
}

// needlessProbe raises the probe's floor to delay, the time the probed
// block's first ACK took: the client had the block and answered the probe
// as a repeat.
func (e *rtoEstimator) needlessProbe(delay time.Duration) {
	e.probeFloor = min(max(e.probeFloor, delay), e.limit)
}

// usefulProbe halves the probe's floor: the probed block's ACK came once,
// and the next block's ACK came with no repeat of it between, so the probe
// answered a loss. A floor raised by a few late answers would otherwise make
// every later loss wait as long, to the transfer's end; as with RACK's
// reordering window (RFC 8985, 7.2), the recoveries that follow bring it
// back down.
func (e *rtoEstimator) usefulProbe() { e.probeFloor /= 2 }

// Bounds of what clientTimed takes for a client's own retry timer: longer
// than the round trips and a busy machine's scheduling delays, shorter than
// the seconds atftp's and U-Boot's timers run, which no wait of ours should
// follow.
const (
	minClientTimer = 10 * time.Millisecond
	maxClientTimer = 500 * time.Millisecond
)

// clientTimed takes the ACK of a resent block that came gap after its
// latest copy: when that is far longer than a round trip, the client did
// not answer the copy, and the ACK is its own timer's resend, run from
// that copy. busybox is such a client: it ignores a repeated block but
// restarts its 100 ms timer on it, so copies sent more often than that
// only put its ACK off (see onTimeout). Only a lockstep transfer's ACKs are
// taken: a window client's ACK after a gap may follow several of its own
// timer's resends that were lost, and its span would be theirs together.
func (e *rtoEstimator) clientTimed(gap time.Duration) {
	if gap < max(4*e.srtt, minClientTimer) || gap > maxClientTimer {
		return
	}
	if e.clientTimer == 0 || gap < e.clientTimer {
		e.clientTimer = gap
	}
}

// awaitClientTimer raises the timeout so that the client's own timer, once
// known, fires before the next copy: a quarter more than it.
func (e *rtoEstimator) awaitClientTimer() {
	if e.clientTimer > 0 {
		e.rto = min(max(e.rto, e.clientTimer+e.clientTimer/4), e.limit)
	}
}

// reorderWindow is how long a block is given to reach the client before a
// gap reported after it is taken for its loss: half the smoothed round trip.
// A loss at a window's client always brings a gap, so this is paid on every
// loss and kept short; a late duplicate's answer comes sooner than that
// after the resend that duplicated it (TestLateDuplicatesDoNotCascade).
func (e *rtoEstimator) reorderWindow() time.Duration {
	return max(e.srtt/2, 50*time.Microsecond)
}

// resetBackoff returns to the timeout the estimate gives, or to the initial
// one while there is no estimate: under heavy loss every ACK may answer a
// resent block, and the doubled timeout must not outlive the timeouts.
func (e *rtoEstimator) resetBackoff() {
	if e.sampled {
		e.rto = min(max(e.srtt+4*e.rttvar, e.floor), e.limit)
	} else {
		e.rto = min(initialRTO, e.limit)
	}
}

// paceSlack is how far a pacer's schedule may fall behind the clock: a
// window the scheduler woke late (Go's timers wake a millisecond late, a
// busy machine's stall a transfer for tens) is made up for by the windows
// after it, and an idle transfer saves up no more than this for later, a
// tenth of what a second at the rate may carry.
const paceSlack = 100 * time.Millisecond

// ratePacer is a rate limit as GCRA's virtual scheduling (the ATM Forum's
// generic cell rate algorithm, counted in bytes): tat, the theoretical
// arrival time, is when the bytes booked so far would have left at the
// rate. Bytes booked leave at their first byte's theoretical time, which
// then moves on by their time at the rate. Over any span the bytes that
// leave are at most the rate's for the span and paceSlack, plus the one
// window booked last. One pacer is a transfer's own (--max-rate); the
// --max-total-rate one is shared by every transfer, booked first come,
// first served.
type ratePacer struct {
	perByte float64 // nanoseconds a byte takes at the rate
	mu      sync.Mutex
	tat     time.Time
}

// newRatePacer paces at bytesPerSecond, or is nil (no limit) for 0.
func newRatePacer(bytesPerSecond int64) *ratePacer {
	if bytesPerSecond <= 0 {
		return nil
	}
	return &ratePacer{perByte: 1e9 / float64(bytesPerSecond)}
}

// book reserves n bytes at now and returns when they may leave; a nil
// pacer lets them leave now.
func (p *ratePacer) book(n int, now time.Time) time.Time {
	if p == nil {
		return now
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	start := p.tat
	if floor := now.Add(-paceSlack); start.Before(floor) {
		start = floor
	}
	p.tat = start.Add(time.Duration(float64(n) * p.perByte))
	return start
}

// pacing is a sender's rate limits, each nil when not set: its own and the
// one all transfers share.
type pacing struct{ own, total *ratePacer }

// departure books a window of n bytes with both limits and returns when it
// may leave: when both have given it its time.
func (p pacing) departure(n int, now time.Time) time.Time {
	at := p.own.book(n, now)
	if t := p.total.book(n, now); t.After(at) {
		at = t
	}
	return at
}

// limited reports whether any rate limit is set.
func (p pacing) limited() bool { return p.own != nil || p.total != nil }

// sender runs one read transfer. run waits for the next event (an ACK, the
// retransmission timeout, the tail-loss probe, a reported gap falling due,
// a paced window's time) and hands it to one method each. Which timer runs
// follows from the phase and the times of what was sent and heard; the one
// deadline stored is a paced window's, the time its rate booked for it.
type sender struct {
	conn    transferConn
	src     source
	blksize int
	window  uint64
	// rollover is the block number after 65535 (see blockNumber).
	rollover uint16
	rto      rtoEstimator
	retries  int
	// oack is block 0: the OACK packet, or nil when there is none.
	oack []byte
	// lastHeard is when the client last sent anything, lastProgress when
	// it last acknowledged a new block; patience is how long a silent
	// client, or one that answers but takes no block, is waited for before
	// the transfer is given up.
	lastHeard, lastProgress time.Time
	patience                time.Duration
	// finalGrace is how long a quiet spell with the final block in flight
	// lasts before the transfer is given up (see givingUp).
	finalGrace time.Duration
	progress   *transferProgress
	// offered is set while the listener holds the first reply.
	offered bool

	// batch holds the DATA packets of one window end to end, each a 4-byte
	// header and a block; blocks are the blocks' places in it.
	batch  []byte
	blocks [][]byte
	in     []byte // the client's packets

	// The window in absolute block numbers (block 0 is the OACK, data
	// counts from 1, nothing wraps): base is the oldest block not
	// acknowledged, next the first never sent, last the final block once a
	// short read has found it (0 until then). Nothing past base+window-1
	// is ever sent.
	base, next, last uint64
	// sends records, for each block of the window (by number modulo the
	// window), when it went out and whether that was its only send: the
	// ACK of a block sent once is a round-trip sample, the ACK of a resent
	// one is not, as it may answer either copy (Karn).
	sends []blockSend
	epoch time.Time // sends' times count from here, on the monotonic clock
	// now is the time of the event being handled, as readClock took it:
	// what the event notes (an ACK's arrival, progress, a send) takes this
	// one reading. Each reading is a system call where Go has no vDSO
	// clock (32-bit MIPS, the routers), and time.Now is two of them, the
	// wall clock too: a lockstep block read the clock ten times, now twice
	// (recv waits from the reading after the send).
	now time.Time

	phase senderPhase
	// windowSent is when the window or a block of it last went out: the
	// retransmission timeout and the tail-loss probe count from it.
	// windowOut is when the window last went out whole, or from a gap.
	windowSent, windowOut time.Time
	// timeouts counts the timeouts since the client last made progress.
	timeouts int
	// probed is the block the last tail-loss probe repeated, and
	// probedAckDelay how long that block's ACK took from its first send:
	// when the client then ACKs it again, the probe was needless.
	probed         uint64
	probedAckDelay time.Duration
	// pace holds the rate limits; departs is when the paced window
	// leaves, from base, and pacedAfterGap whether it resends after a gap.
	pace          pacing
	departs       time.Time
	pacedAfterGap bool
	stats         transferStats
}

// senderPhase is what the sender waits for besides an ACK.
type senderPhase int

const (
	// awaitingAck: a window is out, with no timeout since the last
	// progress: the tail-loss probe comes before the timeout.
	awaitingAck senderPhase = iota
	// probed: the probe went out; the timeout is next.
	probed
	// gapPending: the client reported a gap; the resend from it waits
	// until the missing block had a reorder window to arrive.
	gapPending
	// backingOff: a window resent after a timeout; only the timeout runs.
	backingOff
	// silent: --retries timeouts in a row; the client's own timer is
	// waited for, up to the patience.
	silent
	// paced: the next window waits for its time at the rate; no timer
	// runs, as nothing it would resend has left yet, and an ACK only
	// moves the base the window leaves from.
	paced
)

type blockSend struct {
	at      time.Duration // the latest send
	earlier time.Duration // the send before it
	once    bool
}

// event is what run waits for.
type event int

const (
	eventAck event = iota
	eventTimeout
	eventProbe
	eventGap
	eventDepart
)

func newSender(conn transferConn, src source, p transferParams, oack []byte, retries int, pace pacing, progress *transferProgress) *sender {
	w := &sender{
		pace:       pace,
		conn:       conn,
		src:        src,
		blksize:    p.blksize,
		window:     uint64(p.windowsize),
		rollover:   p.rollover,
		rto:        newRTOEstimator(p.timeout),
		retries:    retries,
		oack:       oack,
		patience:   time.Duration(retries) * p.timeout,
		finalGrace: clientRetryWait(p.timeout),
		progress:   progress,
		in:         make([]byte, 1024),
		sends:      make([]blockSend, p.windowsize),
		epoch:      time.Now(),
	}
	slots := p.windowsize
	if f, ok := src.(sizedSource); ok {
		// No window holds more blocks than the file, the final empty
		// one and all: a boot's scripts and menus need a block or two.
		slots = int(min(int64(slots), f.knownSize()/int64(p.blksize)+1))
	}
	seg := 4 + p.blksize
	w.batch = make([]byte, slots*seg)
	w.blocks = make([][]byte, slots)
	for i := range w.blocks {
		w.blocks[i] = w.batch[i*seg+4 : (i+1)*seg]
	}
	progress.begin(p)
	return w
}

// sizedSource is a source whose size is known without waiting for it, and
// that never reads past it: a local file, as long as it was when opened.
type sizedSource interface {
	knownSize() int64
}

// run sends the OACK, if there is one, and the file.
func (w *sender) run() error {
	w.lastHeard = w.readClock()
	w.lastProgress = w.now
	w.base = 1
	if w.oack != nil {
		w.base = 0
	}
	w.next = w.base
	if err := w.sendFrom(w.base, false); err != nil {
		return err
	}
	w.offerFirst()
	defer w.withdrawFirst()
	for {
		due, ev := w.nextEvent()
		blk, err := w.awaitAck(due)
		if isTimeout(err) {
			err = nil
		} else {
			ev = eventAck
		}
		if err != nil {
			return err
		}
		done := false
		switch ev {
		case eventAck:
			done, err = w.onAck(blk)
		case eventTimeout:
			err = w.onTimeout()
		case eventProbe:
			err = w.onProbe()
		case eventGap:
			err = w.onGapDue()
		case eventDepart:
			err = w.onDepart()
		}
		if done || err != nil {
			return err
		}
	}
}

// offerFirst offers the first reply to the listener (see firstReply) once
// it went out alone: the OACK, or DATA 1 of a transfer without options,
// whose payload is all that stats.bytes counts yet.
func (w *sender) offerFirst() {
	if w.progress == nil || w.next != w.base+1 {
		return // a window the rate holds back is sent later, by onDepart
	}
	pkt := w.oack
	if w.base != 0 {
		pkt = w.batch[:4+w.stats.bytes]
	}
	w.progress.first.offer(w.conn, pkt, w.windowSent)
	w.offered = true
}

// withdrawFirst ends the offer, once the client has sent anything or the
// transfer ends. The listener's copies count as resends, and the answer to
// the first reply is then no round-trip sample: it may answer a copy.
func (w *sender) withdrawFirst() {
	if !w.offered {
		return
	}
	w.offered = false
	if copies := w.progress.first.withdraw(); copies > 0 {
		w.stats.retransmits += copies
		w.sends[w.base%uint64(len(w.sends))].once = false
	}
}

// nextEvent is the timer that runs in the current phase, and when it fires.
func (w *sender) nextEvent() (time.Time, event) {
	timeout := w.windowSent.Add(w.rto.rto)
	switch w.phase {
	case awaitingAck:
		if pto, ok := w.rto.probeTimeout(); ok {
			return w.windowSent.Add(pto), eventProbe
		}
	case gapPending:
		if due := w.gapDue(); due.Before(timeout) {
			return due, eventGap
		}
	case silent:
		// The patience counts from the last progress: a client that keeps
		// sending ACKs the window has no answer for does not hold its slot.
		due := w.lastProgress.Add(w.patience)
		if grace := w.quietSince().Add(w.finalGrace); w.finalInFlight() && grace.Before(due) {
			due = grace
		}
		return due, eventTimeout
	case paced:
		return w.departs, eventDepart
	}
	return timeout, eventTimeout
}

// gapDue is when the block missing at base counts as lost: a reorder
// window after it went out.
func (w *sender) gapDue() time.Time {
	return w.epoch.Add(w.sends[w.base%uint64(len(w.sends))].at + w.rto.reorderWindow())
}

// awaitAck returns the number of the client's next ACK. A timeout comes back
// as an error for which isTimeout is true; an ERROR from the client as
// errClientAbort; anything else is a protocol violation the client is told of.
func (w *sender) awaitAck(deadline time.Time) (uint16, error) {
	n, err := w.conn.recv(w.in, deadline, w.now)
	w.readClock()
	if err != nil {
		if errors.Is(err, errShutdown) {
			return 0, sendError(w.conn, err)
		}
		return 0, err
	}
	w.withdrawFirst()
	w.lastHeard = w.now
	if blk, ok := parseAck(w.in[:n]); ok {
		return blk, nil
	}
	if packetOp(w.in[:n]) == opERROR {
		return 0, errClientAbort
	}
	return 0, sendError(w.conn, errExpectedAck)
}

// readClock sets the event's time, now, from the monotonic clock alone.
func (w *sender) readClock() time.Time {
	w.now = w.epoch.Add(time.Since(w.epoch))
	return w.now
}

func (w *sender) sampleRTT(r time.Duration) {
	w.rto.sample(r)
	w.stats.rtt = w.rto.srtt
}

// clientRetryWait is how long a side waits when only the client's own
// timer can bring its next packet: longer than that timer runs. Clients
// resend after 5 s (atftp, tftp-hpa, U-Boot) or 6 s (curl) unless they
// negotiated a timeout, and then after it.
func clientRetryWait(timeout time.Duration) time.Duration {
	return max(7*time.Second, timeout+timeout/2)
}

// quietSince is when the exchange last moved: the client's latest packet or
// the latest copy sent, whichever came later. A client's timer runs from
// its own send, and atftp's restarts on every copy it gets.
func (w *sender) quietSince() time.Time {
	if w.windowSent.After(w.lastHeard) {
		return w.windowSent
	}
	return w.lastHeard
}

func (w *sender) finalInFlight() bool { return w.last != 0 && w.next > w.last }

// givingUp decides after a timeout, and says why the transfer ends, or nil.
// After more than --retries timeouts in a row, the client is given --retries
// times the timeout cap, so one that pauses (writing flash, say) is not
// dropped: of silence, or, for one that keeps answering, of no progress.
// Once the final block is in flight, a quiet spell of finalGrace ends it
// sooner: a client that lacks the final block asks again on its own timer
// within that (atftp waits 5 s once its ACK and its one answer to a copy
// were lost), and one that has it is done. Most that are done closed their
// port, and the ICMP port unreachable that a copy draws ends the transfer
// at once (errClientGone); firmware sends none, and holds the slot until
// then.
func (w *sender) givingUp() error {
	switch {
	case w.timeouts <= w.retries:
		return nil
	case w.finalInFlight() && w.now.Sub(w.quietSince()) >= w.finalGrace, w.now.Sub(w.lastHeard) >= w.patience:
		return errTimeout
	case w.now.Sub(w.lastProgress) >= w.patience:
		return errNoProgress
	}
	return nil
}

// sendRange sends blocks first to end as one batch, each read from the
// source into its place (block 0 is the OACK), and notes the final block
// when the source ends before end. afterGap marks resends of blocks the
// client discarded after a gap: their ACKs answer these copies.
func (w *sender) sendRange(first, end uint64, afterGap bool) error {
	now := w.now.Sub(w.epoch)
	if first == 0 {
		w.noteSend(0, now, afterGap)
		if err := w.conn.send(w.oack); err != nil && !isRefused(err) {
			return err
		}
		return nil
	}
	seg := 4 + w.blksize
	n, calls, err := w.src.readBlocks(int64(first-1)*int64(w.blksize), w.blocks[:min(end-first+1, uint64(len(w.blocks)))])
	w.stats.dataCalls += calls
	if err != nil {
		return sendError(w.conn, err)
	}
	size := 0
	for k := first; k <= end; k++ {
		got := min(max(n-int(k-first)*w.blksize, 0), w.blksize)
		putHeader(w.batch[size:], opDATA, w.blockNumber(k))
		if w.noteSend(k, now, afterGap) {
			w.stats.bytes += int64(got)
		}
		size += 4 + got
		if got < w.blksize {
			w.last = k
			if w.progress != nil {
				w.progress.finalBlock.Store(true)
			}
			break
		}
	}
	if w.progress != nil {
		w.progress.bytes.Store(w.stats.bytes)
	}
	calls, err = w.conn.sendBatch(w.batch[:size], seg)
	w.stats.dataCalls += calls
	if err != nil && !isRefused(err) {
		return err
	}
	return nil
}

// noteSend records that block k goes out now, and reports whether that is
// its first send.
func (w *sender) noteSend(k uint64, now time.Duration, afterGap bool) bool {
	sent := &w.sends[k%uint64(len(w.sends))]
	sent.earlier, sent.at = sent.at, now
	if k < w.next {
		w.stats.retransmits++
		sent.once = afterGap
		return false
	}
	w.next = k + 1
	sent.once = true
	return true
}

// windowEnd is the last block the window holds: base+window-1, the final
// block, or the OACK alone as block 0.
func (w *sender) windowEnd() uint64 {
	end := w.base + w.window - 1
	if w.base == 0 {
		end = 0 // the client must take the OACK before any data
	}
	if w.last != 0 {
		end = min(end, w.last)
	}
	return end
}

// sendFrom sends blocks from k to the end of the window and starts the
// round's timers, or, when a rate limit has not yet given the window's
// data its time, waits for it in the paced phase.
func (w *sender) sendFrom(k uint64, afterGap bool) error {
	if end := w.windowEnd(); w.pace.limited() && k != 0 && k <= end {
		if at := w.pace.departure(int(end-k+1)*w.blksize, w.now); at.After(w.now) {
			w.phase, w.departs, w.pacedAfterGap = paced, at, afterGap
			w.stats.paced += at.Sub(w.now)
			return nil
		}
	}
	return w.transmit(k, afterGap)
}

// onDepart sends the paced window, from the base as ACKs that came
// meanwhile left it.
func (w *sender) onDepart() error { return w.transmit(w.base, w.pacedAfterGap) }

// transmit sends blocks from k to the end of the window, and starts the
// round's timers: they count from when the window leaves, so no wait for
// the rate is taken for a round trip or a loss.
func (w *sender) transmit(k uint64, afterGap bool) error {
	if end := w.windowEnd(); k <= end {
		if err := w.sendRange(k, end, afterGap); err != nil {
			return err
		}
	}
	w.windowSent = w.readClock()
	w.windowOut = w.windowSent
	w.phase = awaitingAck
	if w.timeouts > 0 {
		w.phase = backingOff
	}
	return nil
}

// onAck slides the window to the block the client acknowledged. It reports
// whether that was the final block.
func (w *sender) onAck(blk uint16) (bool, error) {
	// Place the 16-bit number among the blocks sent. Zero is the block
	// before the window (a repeated ACK); past what was sent is stale.
	d := w.blocksAfterBase(blk)
	if d == 0 {
		return false, w.onRepeatedAck()
	}
	if d > w.next-w.base {
		return false, nil
	}
	acked := w.base - 1 + d
	w.measure(acked)
	w.timeouts, w.lastProgress = 0, w.now
	if w.last != 0 && acked == w.last {
		return true, nil
	}
	w.base = acked + 1
	switch {
	case w.phase == paced:
		return false, nil // the window leaves from the new base in its time
	case w.base < w.next:
		return false, w.onGap()
	}
	return false, w.sendFrom(w.base, false)
}

// blockNumber is absolute block k's number on the wire. Numbers wrap after
// 65535 to 0, or to 1 with rollover 1: then the numbers after the first
// wrap run through 1-65535.
func (w *sender) blockNumber(k uint64) uint16 {
	if k <= 65535 || w.rollover == 0 {
		return uint16(k)
	}
	return uint16(1 + (k-65536)%65535)
}

// blocksAfterBase is how far the block numbered blk lies after base-1, the
// block before the window: 0 for that block, a count past what was sent for
// a stale number.
func (w *sender) blocksAfterBase(blk uint16) uint64 {
	if w.rollover == 0 || w.base == 0 {
		// While the OACK is out, base-1 wraps to 65535 and places ACK 0
		// one after it.
		return uint64(blk - uint16(w.base-1))
	}
	before := w.blockNumber(w.base - 1)
	d := uint64(blk - before)
	if blk < before {
		if blk == 0 {
			return math.MaxUint64 // the OACK's ACK, long past
		}
		d-- // the numbers skipped 0 on the way from before to blk
	}
	return d
}

// measure takes what the ACK of block acked says about the round trip: a
// sample when the block went out once (Karn) and no timeout came since, a
// spurious timeout when the ACK came too soon to answer the resend (Eifel),
// and after timeouts, the end of the backoff: the client is there and
// answering, so the backoff was for losses, not for a longer round trip.
// After a timeout, the ACK of a window's block sent once may be the
// client's own timer's, long after the block: a window client whose gap
// report was lost sends it so, and taking that span for a round trip set
// the timer to 185 ms, and the probe's floor to 345 ms, for the rest of a
// transfer that lost 5%. Not taking it costs a client that was only busy
// (U-Boot on a loaded host) a few more single-block copies in its next
// stall; sampling until the server fell silent, and not after, left most
// of the loss's cost in place, as such ACKs also come between the copies.
func (w *sender) measure(acked uint64) {
	sent := w.sends[acked%uint64(len(w.sends))]
	now := w.now.Sub(w.epoch)
	if w.probedAckDelay > 0 {
		w.rto.usefulProbe()
	}
	w.probedAckDelay = 0
	if w.probed != 0 && acked == w.probed && w.timeouts == 0 { // the OACK, block 0, is never probed
		w.probedAckDelay = now - sent.earlier
	}
	switch {
	case sent.once && w.timeouts == 0:
		w.sampleRTT(now - sent.at)
	case w.rto.answersEarlierCopy(now - sent.at):
		w.rto.spurious(now - sent.earlier)
		w.stats.rtt = w.rto.srtt
	case w.timeouts > 0:
		if w.window == 1 {
			w.rto.clientTimed(now - sent.at)
		}
		w.rto.resetBackoff()
	}
}

// onRepeatedAck answers the ACK of the block before the window, sent again.
// Outside a timeout it is a duplicate, and the timer and the probe deal with
// loss; it is not taken for a gap at base, though atftp and the test client
// send it so: resending the window on it killed U-Boot's virtio-net under
// load (TestFirmware, window 16, a yes per core). After one, it is the
// client's answer to a block the timeout resent, or its own timer asking for
// the window (atftp and U-Boot answer a repeated block only once and then
// wait for their timer, which every resend restarts): the client is there and reading, so it gets the whole window
// again, at most once per retransmission timeout and minWindowRTO (or the
// paced window, when it leaves), counted from the window's last send, not
// from the single blocks the timers resent; after --retries times the
// timeout cap without progress, the transfer ends instead.
func (w *sender) onRepeatedAck() error {
	if w.timeouts == 0 {
		// A repeat of the ACK of a block a probe repeated answers the
		// probe's copy (tftp-hpa, U-Boot and atftp ACK a repeat): the
		// client had the block, and its first ACK was only slow.
		if w.probed == w.base-1 && w.probedAckDelay > 0 {
			w.rto.needlessProbe(w.probedAckDelay)
			w.probedAckDelay = 0
		}
		return nil
	}
	if w.now.Sub(w.lastProgress) >= w.patience {
		return sendError(w.conn, errNoProgress)
	}
	if w.phase == paced {
		return nil // the window it asks for waits for its time already
	}
	if w.now.Sub(w.windowOut) < max(w.rto.rto, minWindowRTO) {
		return nil
	}
	return w.sendFrom(w.base, false)
}

// onGap handles an ACK from inside the window: the client saw a gap, and
// dropped what followed it. Or it saw a late duplicate, which atftp also
// answers with an ACK of its newest block; resending for each of those the
// blocks still in flight would make their copies provoke the next such ACK,
// a cascade without end. So, as in RACK (RFC 8985), the missing block counts
// as lost once it was sent a reorder window ago; a block sent more recently
// may still arrive, and its ACK would make a resend moot.
func (w *sender) onGap() error {
	if w.now.Before(w.gapDue()) {
		w.phase = gapPending
		return nil
	}
	return w.sendFrom(w.base, true)
}

// onGapDue resends from a reported gap: the blocks after it had time to
// arrive and no ACK followed.
func (w *sender) onGapDue() error { return w.sendFrom(w.base, true) }

// onProbe sends a tail-loss probe (as in TCP's RACK-TLP, RFC 8985): when
// the ACK is late by twice the round trip, the round's final block goes out
// again, costing one packet instead of a timeout. If it was lost the client
// can finish the window; if the ACK was lost, the repeat makes the client
// ACK again.
func (w *sender) onProbe() error {
	if w.pace.limited() {
		w.pace.departure(w.blksize, w.now) // it leaves at once, but counts
	}
	w.phase, w.probed = probed, w.next-1
	return w.sendRange(w.probed, w.probed, false)
}

// onTimeout resends one block per timeout, the window's oldest and its
// newest in turn: U-Boot answers a repeat of any block but its newest, the
// test client and tftp-hpa's style only a repeat of their newest, and a
// client that lacks the tail of the window reports the gap on its newest
// block; the client's answer brings the rest of the window (see onAck). A
// client that is silent since the window went out may still hold all of it
// unread, and a second copy of the window on top of the first overruns it:
// U-Boot's virtio-net has 32 receive buffers and never tells the device it
// has refilled them, so once 33 frames (a window of 16, a probe, the window
// again) arrived while it was busy, it took no packet again until reset.
// So whatever the timers do, the frames sent since the client last answered
// stay within the window plus one per timer event. After --retries timeouts
// in a row the sender falls silent for the client's own timer (see
// onRepeatedAck) until the client has been silent for the patience.
func (w *sender) onTimeout() error {
	w.stats.timeouts++
	w.timeouts++
	if err := w.givingUp(); err != nil {
		return sendError(w.conn, err)
	}
	if w.timeouts > w.retries {
		w.phase = silent
		return nil
	}
	w.rto.backoff()
	if w.timeouts > 1 || w.phase == probed {
		// Two copies went unanswered: the ACK, not the block, may be
		// lost, and a client that restarts its timer on every copy
		// answers only once copies stop coming for its timer's span.
		w.rto.awaitClientTimer()
	}
	if w.pace.limited() && w.base != 0 {
		w.pace.departure(w.blksize, w.now) // one block: it leaves at once, but counts
	}
	resend := w.base
	if w.timeouts%2 == 0 {
		resend = w.next - 1
	}
	if err := w.sendRange(resend, resend, false); err != nil {
		return err
	}
	w.windowSent = w.readClock()
	if w.offered {
		w.progress.first.resent(w.windowSent)
	}
	w.phase = backingOff
	return nil
}

// receiver runs one write transfer (RFC 1350, with RFC 7440 windows). It
// ACKs each full window and the final block; on a gap it ACKs, once, the
// last block received in order, so the sender resends from there, and a
// repeat of that block (its ACK was lost) gets the ACK again. Every block
// goes in order to the sink; the sink commits the upload before the final
// ACK goes out, so a client that sees it knows its file is stored. Buffers
// are the session's: the per-packet path allocates nothing.
type receiver struct {
	conn     transferConn
	sink     uploadSink
	params   transferParams
	retries  int
	progress *transferProgress
	// offered is set while the listener holds the first reply.
	offered bool

	// expected is the next block in order; received counts the blocks
	// taken, sinceAck those since the last ACK; gapReported is set once a
	// gap has been ACKed, until the block it misses comes; timeouts counts
	// the timeouts since the last block in order.
	expected    uint16
	received    int
	sinceAck    int
	gapReported bool
	timeouts    int
	final       uint16 // the final block, once acknowledged

	in        []byte // the client's packets
	ack       []byte
	lastReply []byte // resent when the client falls silent: the OACK or an ACK
	stats     transferStats
}

func newReceiver(conn transferConn, sink uploadSink, p transferParams, oack []byte, retries int, progress *transferProgress) *receiver {
	r := &receiver{
		conn:     conn,
		sink:     sink,
		params:   p,
		retries:  retries,
		progress: progress,
		expected: 1,
		in:       make([]byte, 4+p.blksize+1),
		ack:      []byte{0, opACK, 0, 0},
	}
	r.lastReply = r.ack
	if oack != nil {
		r.lastReply = oack
	}
	progress.begin(p)
	return r
}

// run receives the upload; on any failure the sink throws it away.
func (r *receiver) run() (transferStats, error) {
	err := r.receive()
	if err != nil {
		r.sink.abort()
	}
	return r.stats, err
}

func (r *receiver) receive() error {
	if err := r.conn.send(r.lastReply); err != nil {
		return err
	}
	if r.progress != nil {
		r.progress.first.offer(r.conn, r.lastReply, time.Now())
		r.offered = true
	}
	defer r.withdrawFirst()
	for {
		now := time.Now()
		n, err := r.conn.recv(r.in, now.Add(r.params.timeout), now)
		if err == nil {
			r.withdrawFirst()
		}
		switch {
		case isTimeout(err):
			err = r.onTimeout()
		case errors.Is(err, errShutdown):
			return sendError(r.conn, err)
		case err != nil:
			return err
		default:
			var done bool
			if done, err = r.onPacket(r.in[:n]); done {
				return err
			}
		}
		if err != nil {
			return err
		}
	}
}

// withdrawFirst ends the listener's hold on the first reply (see
// firstReply) once the client has sent anything or the transfer ends; its
// copies count as resends.
func (r *receiver) withdrawFirst() {
	if r.offered {
		r.offered = false
		r.stats.retransmits += r.progress.first.withdraw()
	}
}

// onTimeout answers the client's silence with the last reply again, until
// --retries timeouts in a row.
func (r *receiver) onTimeout() error {
	r.stats.timeouts++
	if r.timeouts++; r.timeouts > r.retries {
		return sendError(r.conn, errTimeout)
	}
	r.stats.retransmits++
	if r.offered {
		r.progress.first.resent(time.Now())
	}
	return r.conn.send(r.lastReply)
}

// onPacket takes one packet from the client, and reports whether it ended
// the transfer.
func (r *receiver) onPacket(pkt []byte) (bool, error) {
	blk, payload, ok := parseData(pkt)
	switch {
	case packetOp(pkt) == opERROR:
		return true, errClientAbort
	case !ok:
		return true, sendError(r.conn, errExpectedData)
	case len(payload) > r.params.blksize:
		return true, sendError(r.conn, errDataTooLarge)
	case blk != r.expected:
		return false, r.onOutOfOrder(blk)
	}
	return r.onBlock(blk, payload)
}

// onOutOfOrder answers a block that is not the next one.
func (r *receiver) onOutOfOrder(blk uint16) error {
	switch {
	case blk == r.previous() && r.received > 0:
		// A repeat of the newest block: its ACK was lost, or a window is
		// being resent after a timeout.
		r.stats.retransmits++
		r.sinceAck = 0
		return r.sendAck(blk)
	case int16(blk-r.expected) > 0 && !r.gapReported:
		// A block was lost: what follows it is dropped, and the sender
		// learns where to resume, once per gap.
		r.gapReported = true
		r.sinceAck = 0
		return r.sendAck(r.previous())
	}
	return nil
}

// previous is the number of the block before the expected one: 0 before
// the first, and 65535 before the block that follows it.
func (r *receiver) previous() uint16 {
	if r.received > 0 && r.expected == r.params.rollover {
		return 65535
	}
	return r.expected - 1
}

// onBlock stores the next block in order, ACKs it when it ends a window or
// the upload, and reports whether it was the final block.
func (r *receiver) onBlock(blk uint16, payload []byte) (bool, error) {
	r.gapReported, r.timeouts = false, 0
	r.stats.bytes += int64(len(payload))
	if err := r.sink.write(payload); err != nil {
		return true, sendError(r.conn, err)
	}
	r.received++
	if r.expected++; r.expected == 0 {
		r.expected = r.params.rollover // the block after 65535
	}
	r.sinceAck++
	if len(payload) < r.params.blksize {
		if r.progress != nil {
			r.progress.finalBlock.Store(true)
		}
		if err := r.sink.commit(); err != nil {
			return true, sendError(r.conn, err)
		}
		if err := r.sendAck(blk); err != nil {
			return true, err
		}
		r.stats.completed, r.final = time.Now(), blk
		return true, nil
	}
	if r.sinceAck >= r.params.windowsize {
		r.sinceAck = 0
		return false, r.sendAck(blk)
	}
	return false, nil
}

func (r *receiver) sendAck(blk uint16) error {
	if r.progress != nil {
		r.progress.bytes.Store(r.stats.bytes)
	}
	putHeader(r.ack, opACK, blk)
	r.lastReply = r.ack
	return r.conn.send(r.ack)
}

// linger answers repeats of the final block for longer than the client's
// retransmission timeout: if the final ACK was lost, the client resends its
// final block (alone or at the end of its window) on its own timer, and
// must get the ACK again, or it reports a failure for a stored upload and
// may try again into ERROR 6. A shutdown ends it at once (the transfer is
// ended, and recv returns).
func (r *receiver) linger() {
	deadline := time.Now().Add(clientRetryWait(r.params.timeout))
	for answers := 0; answers <= r.retries; {
		n, err := r.conn.recv(r.in, deadline, time.Now())
		if err != nil {
			return
		}
		if blk, _, ok := parseData(r.in[:n]); ok && blk == r.final {
			answers++
			_ = r.conn.send(r.ack)
		}
	}
}
