// The RFC 7440 sending engine: it sends a window of DATA blocks, slides it on
// each ACK and recovers from loss. The window is the receiver's limit: no
// block past it is ever sent, and resends are paced by a retransmission
// timer with a floor, so a slow receiver (a boot ROM, an emulated NIC with a
// small ring) is never sent more than it agreed to take.
// It keeps block numbers, not copies: every block, first send or resend, is
// read by offset from the source into one session-owned window buffer, each
// behind its 4-byte header, and the blocks due leave as one batch (one
// preadv from a local file, one GSO send; see batch.go). The per-window path
// allocates nothing and memory stays one window per transfer.
package main

import (
	"errors"
	"io"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// source is whatever is served. It is read by offset, and knows its size or
// knows it does not know it yet (Size returns -1).
type source interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// Retransmission timer bounds. minRTO is what a jittery receiver cannot
// push the timer under: window resends a few milliseconds apart overran
// U-Boot on an emulated NIC, whose answers come late now and then. The
// tail-loss probe, one block, has a floor of its own that is far lower: a
// lost packet on a LAN should cost about a millisecond. The first timeout is
// RFC 6298's 1 s (or the cap, when that is lower) until a round trip has
// been measured.
const (
	minRTO     = 20 * time.Millisecond
	minProbe   = time.Millisecond
	initialRTO = time.Second
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
	sampled    bool
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

// errNoProgress ends a transfer whose client keeps repeating its ACK while
// no block resent for it arrives.
var errNoProgress = &wireError{codeUndefined, "no progress: resent blocks are not arriving"}

// sender runs one read transfer. run waits for the next event (an ACK, the
// retransmission timeout, the tail-loss probe, a reported gap falling due)
// and hands it to one method each; the state they share is in named fields.
type sender struct {
	conn    transferConn
	src     source
	blksize int
	window  uint64
	rto     rtoEstimator
	retries int
	stop    <-chan struct{}
	// lastHeard is when the client last sent anything, lastProgress when
	// it last acknowledged a new block; patience is how long a silent
	// client, or one that answers but takes no block, is waited for before
	// the transfer is given up.
	lastHeard, lastProgress time.Time
	patience                time.Duration

	// batch holds the DATA packets of one window end to end, each a 4-byte
	// header and a block; iovs point at the blocks' places in it.
	batch []byte
	iovs  []unix.Iovec
	// file reads a local file's blocks with one preadv, when the source is
	// one; readResult is what the last call found.
	file       syscall.RawConn
	readFn     func(fd uintptr) bool
	readIovs   []unix.Iovec
	readOff    int64
	readResult struct {
		n     int
		errno syscall.Errno
	}
	in      []byte // the client's packets
	scratch []byte // outgoing ERROR packets

	// The window in absolute block numbers (counted from 1, not wrapped):
	// base is the oldest block not acknowledged, sentMax the highest sent,
	// last the final block once a short read has found it (0 until then).
	// Nothing past base+window-1 is ever sent.
	base, sentMax, last uint64
	// sends records, for each block of the window (by number modulo the
	// window), when it went out and whether that was its only send: the
	// ACK of a block sent once is a round-trip sample, the ACK of a resent
	// one is not, as it may answer either copy (Karn).
	sends []blockSend
	epoch time.Time // sends' times count from here, on the monotonic clock

	// The timers, zero when not armed: the retransmission timeout, the
	// tail-loss probe, and the resend of a gap the client reported.
	rtoDue, probeDue, gapDue time.Time
	// timeouts counts the timeouts since the client last made progress.
	timeouts int
	// finalBlock, when set, is told that the final block went out: the
	// listener then takes the same request again for a new transfer.
	finalBlock *atomic.Bool
	// probed is the block the last tail-loss probe repeated, and
	// probedAckDelay how long that block's ACK took from its first send:
	// when the client then ACKs it again, the probe was needless.
	probed         uint64
	probedAckDelay time.Duration
	// afterGap is set while the blocks after a gap the client reported are
	// resent. It discarded or lost their earlier copies, so the ACK of a
	// resend answers the resend: it is a sample, as for a first send.
	afterGap bool
	stats    transferStats
}

type blockSend struct {
	at      time.Duration // the latest send
	earlier time.Duration // the send before it
	once    bool
}

func newSender(conn transferConn, src source, p transferParams, retries int, stop <-chan struct{}) *sender {
	w := &sender{
		conn:     conn,
		src:      src,
		blksize:  p.blksize,
		window:   uint64(p.windowsize),
		rto:      newRTOEstimator(p.timeout),
		retries:  retries,
		patience: time.Duration(retries) * p.timeout,
		stop:     stop,
		batch:    make([]byte, p.windowsize*(4+p.blksize)),
		iovs:     make([]unix.Iovec, p.windowsize),
		in:       make([]byte, 1024),
		sends:    make([]blockSend, p.windowsize),
		epoch:    time.Now(),
	}
	// A local file (and nothing that converts or waits, such as netascii
	// or a download) is read a window at a time.
	if f, ok := src.(interface {
		SyscallConn() (syscall.RawConn, error)
	}); ok {
		if raw, err := f.SyscallConn(); err == nil {
			w.file, w.readFn = raw, w.preadv
		}
	}
	return w
}

// fail tells the client why the transfer ends.
func (w *sender) fail(err error) error {
	w.scratch = appendError(w.scratch[:0], toWireError(err))
	_ = w.conn.send(w.scratch)
	return err
}

// stopped reports whether the server has told running transfers to end.
func stopped(stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
		return false
	}
}

// awaitAck returns the number of the client's next ACK. A timeout comes back
// as an error for which isTimeout is true; an ERROR from the client as
// errClientAbort; anything else is a protocol violation the client is told of.
func (w *sender) awaitAck(deadline time.Time) (uint16, error) {
	n, err := w.conn.recv(w.in, deadline)
	if errors.Is(err, errShutdown) {
		return 0, w.fail(err)
	}
	if err != nil {
		return 0, err
	}
	w.lastHeard = time.Now()
	if n >= 4 && w.in[1] == opACK && w.in[0] == 0 {
		return uint16(w.in[2])<<8 | uint16(w.in[3]), nil
	}
	if n >= 2 && w.in[0] == 0 && w.in[1] == opERROR {
		return 0, errClientAbort
	}
	return 0, w.fail(newWireError(codeIllegalOp, "expected an ACK"))
}

// sendOACK sends the option acknowledgement and waits for its ACK 0,
// resending it on timeout like a DATA block. Its round trip is the first
// sample of the retransmission timer.
func (w *sender) sendOACK(oack []byte) error {
	w.lastHeard = time.Now()
	for timeouts := 0; ; {
		sent := time.Now()
		if err := w.conn.send(oack); err != nil && !isRefused(err) {
			return err
		}
		deadline := sent.Add(w.rto.rto)
		for {
			blk, err := w.awaitAck(deadline)
			if isTimeout(err) {
				break
			}
			if err != nil {
				return err
			}
			if blk == 0 {
				if timeouts == 0 { // Karn: a resent OACK's ACK is ambiguous
					w.sampleRTT(time.Since(sent))
				}
				return nil
			}
		}
		w.stats.timeouts++
		if timeouts++; w.givingUp(timeouts) != nil {
			return w.fail(errTimeout)
		}
		w.rto.backoff()
		w.stats.retransmits++
	}
}

func (w *sender) sampleRTT(r time.Duration) {
	w.rto.sample(r)
	w.stats.rtt = w.rto.srtt
}

// givingUp decides after a timeout, and says why the transfer ends, or nil.
// More than --retries timeouts in a row end it once the final block is in
// flight: a client that has it is done and will not ask again, so its slot
// is freed at once. Before that, the client is also given --retries times
// the timeout cap, so one that pauses (writing flash, say) is not dropped:
// of silence, or, for one that keeps answering, of no progress.
func (w *sender) givingUp(timeouts int) error {
	switch {
	case stopped(w.stop):
		return errShutdown
	case timeouts <= w.retries:
		return nil
	case w.last != 0 && w.sentMax >= w.last, time.Since(w.lastHeard) >= w.patience:
		return errTimeout
	case time.Since(w.lastProgress) >= w.patience:
		return errNoProgress
	}
	return nil
}

// readBlocks reads count blocks from block first (counted from 1) into their
// places in the batch buffer and returns the bytes read: fewer than count
// blocks' worth only at the end of the source.
func (w *sender) readBlocks(first uint64, count int) (int, error) {
	seg, off := 4+w.blksize, int64(first-1)*int64(w.blksize)
	if w.file != nil {
		for i := range count {
			w.iovs[i].Base = &w.batch[i*seg+4]
			w.iovs[i].SetLen(w.blksize)
		}
		w.readIovs, w.readOff = w.iovs[:count], off
		w.stats.dataCalls++
		if err := w.file.Read(w.readFn); err != nil {
			return 0, err
		}
		if w.readResult.errno != 0 {
			return 0, w.readResult.errno
		}
		return w.readResult.n, nil
	}
	total := 0
	for i := range count {
		w.stats.dataCalls++
		n, err := w.src.ReadAt(w.batch[i*seg+4:(i+1)*seg], off+int64(total))
		total += n
		if err != nil && !errors.Is(err, io.EOF) {
			return total, err
		}
		if n < w.blksize {
			break
		}
	}
	return total, nil
}

// preadv is one preadv call, for the file's RawConn.
func (w *sender) preadv(fd uintptr) bool {
	// The offset goes in two words on 32-bit systems; the double shift
	// leaves nothing for the high word on 64-bit ones.
	lo, hi := uintptr(w.readOff), uintptr(uint64(w.readOff)>>(unsafe.Sizeof(uintptr(0))*8-1)>>1)
	n, _, errno := unix.Syscall6(unix.SYS_PREADV, fd, uintptr(unsafe.Pointer(&w.readIovs[0])), uintptr(len(w.readIovs)), lo, hi, 0)
	w.readResult.n, w.readResult.errno = int(n), errno
	return true
}

// sendRange reads blocks first to end (counted from 1, unwrapped) and sends
// them as one batch, noting the final block when the source ends before
// end.
func (w *sender) sendRange(first, end uint64) error {
	seg := 4 + w.blksize
	n, err := w.readBlocks(first, int(end-first+1))
	if err != nil {
		return w.fail(err)
	}
	now := time.Since(w.epoch)
	size := 0
	for k := first; k <= end; k++ {
		got := min(max(n-int(k-first)*w.blksize, 0), w.blksize)
		p := w.batch[size:]
		p[0], p[1], p[2], p[3] = 0, opDATA, byte(k>>8), byte(k)
		sent := &w.sends[k%uint64(len(w.sends))]
		if k <= w.sentMax {
			w.stats.retransmits++
			sent.once = w.afterGap
		} else {
			w.sentMax = k
			w.stats.bytes += int64(got)
			sent.once = true
		}
		sent.earlier, sent.at = sent.at, now
		size += 4 + got
		if got < w.blksize {
			w.last = k
			if w.finalBlock != nil {
				w.finalBlock.Store(true)
			}
			break
		}
	}
	calls, err := w.conn.sendBatch(w.batch[:size], seg)
	w.stats.dataCalls += calls
	if err != nil && !isRefused(err) {
		return err
	}
	return nil
}

// sendFrom sends blocks from k to the end of the window (or the final
// block), then arms the retransmission timer and, while there is no
// timeout to recover from, the tail-loss probe.
func (w *sender) sendFrom(k uint64) error {
	end := w.base + w.window - 1
	if w.last != 0 {
		end = min(end, w.last)
	}
	if k <= end {
		if err := w.sendRange(k, end); err != nil {
			return err
		}
	}
	w.afterGap = false
	now := time.Now()
	w.rtoDue, w.probeDue = now.Add(w.rto.rto), time.Time{}
	if pto, ok := w.rto.probeTimeout(); ok && w.timeouts == 0 {
		w.probeDue = now.Add(pto)
	}
	return nil
}

// event is what run waits for.
type event int

const (
	eventAck event = iota
	eventTimeout
	eventProbe
	eventGap
)

// await waits for the client's next ACK or the first timer to fall due.
func (w *sender) await() (uint16, event, error) {
	due, ev := w.rtoDue, eventTimeout
	if !w.probeDue.IsZero() && w.probeDue.Before(due) {
		due, ev = w.probeDue, eventProbe
	}
	if !w.gapDue.IsZero() && w.gapDue.Before(due) {
		due, ev = w.gapDue, eventGap
	}
	blk, err := w.awaitAck(due)
	if isTimeout(err) {
		return 0, ev, nil
	}
	return blk, eventAck, err
}

// run sends the file.
func (w *sender) run() error {
	if w.lastHeard.IsZero() {
		w.lastHeard = time.Now()
	}
	w.lastProgress = time.Now()
	w.base = 1
	if err := w.sendFrom(1); err != nil {
		return err
	}
	for {
		if stopped(w.stop) {
			return w.fail(errShutdown)
		}
		blk, ev, err := w.await()
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
		}
		if done || err != nil {
			return err
		}
	}
}

// onAck slides the window to the block the client acknowledged. It reports
// whether that was the final block.
func (w *sender) onAck(blk uint16) (bool, error) {
	// Place the 16-bit number among the blocks sent. Zero is the block
	// before the window (a repeated ACK); past what was sent is stale.
	d := uint64(uint16(blk - uint16(w.base-1)))
	if d == 0 {
		return false, w.onRepeatedAck()
	}
	if d > w.sentMax-(w.base-1) {
		return false, nil
	}
	acked := w.base - 1 + d
	w.measure(acked)
	w.timeouts, w.gapDue, w.lastProgress = 0, time.Time{}, time.Now()
	if acked == w.last {
		return true, nil
	}
	w.base = acked + 1
	if acked < w.sentMax {
		return false, w.onGap()
	}
	return false, w.sendFrom(w.base)
}

// measure takes what the ACK of block acked says about the round trip: a
// sample when the block went out once (Karn), a spurious timeout when the
// ACK came too soon to answer the resend (Eifel), and after timeouts, the
// end of the backoff: the client is there and answering, so the backoff
// was for losses, not for a longer round trip.
func (w *sender) measure(acked uint64) {
	sent := w.sends[acked%uint64(len(w.sends))]
	now := time.Since(w.epoch)
	w.probedAckDelay = 0
	if acked == w.probed {
		w.probedAckDelay = now - sent.earlier
	}
	switch {
	case sent.once:
		w.sampleRTT(now - sent.at)
	case w.rto.answersEarlierCopy(now - sent.at):
		w.rto.spurious(now - sent.earlier)
		w.stats.rtt = w.rto.srtt
	case w.timeouts > 0:
		w.rto.resetBackoff()
	}
}

// onRepeatedAck answers the ACK of the block before the window, sent again.
// Outside a timeout it is a duplicate, and the timer and the probe deal with
// loss. After one, it is the client's own timer asking for the window: atftp
// and U-Boot answer a repeated block only once and then wait for their timer,
// which every resend restarts. It gets the window again, at most once per
// retransmission timeout; after --retries times the timeout cap without
// progress, the transfer ends instead.
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
	if time.Since(w.lastProgress) >= w.patience {
		return w.fail(errNoProgress)
	}
	sent := w.sends[w.base%uint64(len(w.sends))]
	if time.Since(w.epoch)-sent.at < w.rto.rto {
		return nil
	}
	return w.sendFrom(w.base)
}

// onGap handles an ACK from inside the window: the client saw a gap, and
// dropped what followed it. Or it saw a late duplicate, which atftp also
// answers with an ACK of its newest block; resending for each of those the
// blocks still in flight would make their copies provoke the next such ACK,
// a cascade without end. So, as in RACK (RFC 8985), the missing block counts
// as lost once it was sent a reorder window ago; a block sent more recently
// may still arrive, and its ACK would make a resend moot.
func (w *sender) onGap() error {
	sent := w.sends[w.base%uint64(len(w.sends))]
	if due := w.epoch.Add(sent.at + w.rto.reorderWindow()); time.Now().Before(due) {
		w.gapDue, w.probeDue = due, time.Time{}
		return nil
	}
	w.afterGap = true
	return w.sendFrom(w.base)
}

// onGapDue resends from a reported gap: the blocks after it had time to
// arrive and no ACK followed.
func (w *sender) onGapDue() error {
	w.gapDue, w.afterGap = time.Time{}, true
	return w.sendFrom(w.base)
}

// onProbe sends a tail-loss probe (as in TCP's RACK-TLP, RFC 8985): when
// the ACK is late by twice the round trip, the round's final block goes out
// again, costing one packet instead of a timeout. If it was lost the client
// can finish the window; if the ACK was lost, the repeat makes the client
// ACK again.
func (w *sender) onProbe() error {
	w.probeDue, w.probed = time.Time{}, w.sentMax
	return w.sendRange(w.sentMax, w.sentMax)
}

// onTimeout resends the window from its oldest block, once per timeout. After
// --retries timeouts in a row it falls silent for the client's own timer
// (see onRepeatedAck) until the client has been silent for the patience.
func (w *sender) onTimeout() error {
	w.stats.timeouts++
	w.timeouts++
	w.gapDue, w.probeDue = time.Time{}, time.Time{}
	if err := w.givingUp(w.timeouts); err != nil {
		return w.fail(err)
	}
	if w.timeouts > w.retries {
		w.rtoDue = w.lastHeard.Add(w.patience)
		return nil
	}
	w.rto.backoff()
	return w.sendFrom(w.base)
}

// receiver runs one write transfer (RFC 1350, with RFC 7440 windows). It
// ACKs each full window and the final block; on a gap it ACKs, once, the
// last block received in order, so the sender resends from there, and a
// repeat of that block (its ACK was lost) gets the ACK again. Every block
// goes in order, converted back from netascii when asked, to the sink; the
// sink commits the upload before the final ACK goes out, so a client that
// sees it knows its file is stored. Buffers are the session's: the
// per-packet path allocates nothing.
type receiver struct {
	conn     transferConn
	sink     uploadSink
	params   transferParams
	netascii bool
	decoder  netasciiDecoder
	retries  int
	final    uint16 // the final block, once acknowledged
	// finalBlock, when set, is told that the final block came in.
	finalBlock *atomic.Bool
	stop       <-chan struct{}
	stats      transferStats

	in        []byte // the client's packets
	decoded   []byte // a block converted from netascii
	ack       []byte
	lastReply []byte // resent when the client falls silent: the OACK or an ACK
	scratch   []byte // outgoing ERROR packets
}

func newReceiver(conn transferConn, sink uploadSink, p transferParams, netascii bool, retries int, stop <-chan struct{}) *receiver {
	r := &receiver{
		conn:     conn,
		sink:     sink,
		params:   p,
		netascii: netascii,
		retries:  retries,
		stop:     stop,
		in:       make([]byte, 4+p.blksize+1),
		ack:      []byte{0, opACK, 0, 0},
	}
	if netascii {
		r.decoded = make([]byte, p.blksize+1)
	}
	r.lastReply = r.ack
	if p.oack != nil {
		r.lastReply = p.oack
	}
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

// fail tells the client why the transfer ends.
func (r *receiver) fail(err error) error {
	r.scratch = appendError(r.scratch[:0], toWireError(err))
	_ = r.conn.send(r.scratch)
	return err
}

func (r *receiver) sendAck(blk uint16) error {
	r.ack[2], r.ack[3] = byte(blk>>8), byte(blk)
	r.lastReply = r.ack
	return r.conn.send(r.ack)
}

// store hands one block's payload to the sink.
func (r *receiver) store(p []byte) error {
	if r.netascii {
		p = r.decoder.decode(r.decoded, p)
	}
	return r.sink.write(p)
}

func (r *receiver) receive() error {
	if err := r.conn.send(r.lastReply); err != nil {
		return err
	}
	expected := uint16(1)
	received := 0 // blocks received in order
	sinceAck := 0
	gapReported := false
	timeouts := 0
	for {
		if stopped(r.stop) {
			return r.fail(errShutdown)
		}
		n, err := r.conn.recv(r.in, time.Now().Add(r.params.timeout))
		if errors.Is(err, errShutdown) {
			return r.fail(err)
		}
		if isTimeout(err) {
			r.stats.timeouts++
			if timeouts++; timeouts > r.retries {
				return r.fail(errTimeout)
			}
			r.stats.retransmits++
			if err := r.conn.send(r.lastReply); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		switch {
		case n >= 2 && r.in[0] == 0 && r.in[1] == opERROR:
			return errClientAbort
		case n < 4 || r.in[0] != 0 || r.in[1] != opDATA:
			return r.fail(newWireError(codeIllegalOp, "expected DATA"))
		case n > 4+r.params.blksize:
			return r.fail(newWireError(codeIllegalOp, "DATA block larger than blksize"))
		}
		blk := uint16(r.in[2])<<8 | uint16(r.in[3])
		if blk != expected {
			switch {
			case blk == expected-1 && received > 0:
				// A repeat of the newest block: its ACK was lost, or a
				// window is being resent after a timeout.
				r.stats.retransmits++
				sinceAck = 0
				if err := r.sendAck(blk); err != nil {
					return err
				}
			case int16(blk-expected) > 0 && !gapReported:
				// A block was lost: what follows it is dropped, and the
				// sender learns where to resume, once per gap.
				gapReported = true
				sinceAck = 0
				if err := r.sendAck(expected - 1); err != nil {
					return err
				}
			}
			continue
		}
		gapReported = false
		timeouts = 0
		r.stats.bytes += int64(n - 4)
		if err := r.store(r.in[4:n]); err != nil {
			return r.fail(err)
		}
		received++
		expected++
		sinceAck++
		if final := n-4 < r.params.blksize; final {
			if r.finalBlock != nil {
				r.finalBlock.Store(true)
			}
			if r.netascii {
				if err := r.sink.write(r.decoder.finish(r.decoded)); err != nil {
					return r.fail(err)
				}
			}
			if err := r.sink.commit(); err != nil {
				return r.fail(err)
			}
			if err := r.sendAck(blk); err != nil {
				return err
			}
			r.stats.completed = time.Now()
			r.final = blk
			return nil
		}
		if sinceAck >= r.params.windowsize {
			sinceAck = 0
			if err := r.sendAck(blk); err != nil {
				return err
			}
		}
	}
}

// Lingering after the final ACK: if it was lost, the client resends its
// final block (alone or at the end of its window) after its own timeout,
// and must get the ACK again, or it reports a failure for a stored upload
// and may try again into ERROR 6. Clients retransmit after 5 s (atftp,
// tftp-hpa) or 6 s (curl) unless they negotiated a timeout.
const minLinger = 7 * time.Second

// linger answers repeats of the final block for longer than the client's
// retransmission timeout. A shutdown ends it at once (the transfer is
// ended, and recv returns).
func (r *receiver) linger() {
	deadline := time.Now().Add(max(minLinger, r.params.timeout+r.params.timeout/2))
	for answers := 0; answers <= r.retries; {
		n, err := r.conn.recv(r.in, deadline)
		if err != nil {
			return
		}
		if n >= 4 && r.in[0] == 0 && r.in[1] == opDATA && uint16(r.in[2])<<8|uint16(r.in[3]) == r.final {
			answers++
			_ = r.conn.send(r.ack)
		}
	}
}
