// The RFC 7440 sending engine: it sends a window of DATA blocks, slides it on
// each ACK and resends from the oldest unacknowledged block after a timeout.
// It keeps block numbers, not copies: every block, first send or resend, is
// read by offset from the source into one session-owned packet buffer, so the
// per-packet path allocates nothing and memory stays one block per transfer.
package main

import (
	"errors"
	"io"
	"time"
)

// source is whatever is served. It is read by offset, and knows its size or
// knows it does not know it yet (Size returns -1).
type source interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// Retransmission timer bounds. The floor keeps scheduling jitter from
// passing for loss on a fast LAN; the first timeout is RFC 6298's 1 s (or
// the cap, when that is lower) until a round trip has been measured.
const (
	minRTO     = 2 * time.Millisecond
	initialRTO = time.Second
)

// rtoEstimator is RFC 6298's retransmission timer: a smoothed round-trip
// time and its variation give the timeout, doubled on each consecutive
// timeout, never above limit (the --timeout or the negotiated timeout).
type rtoEstimator struct {
	srtt, rttvar time.Duration
	rto, limit   time.Duration
	sampled      bool
}

func newRTOEstimator(limit time.Duration) rtoEstimator {
	return rtoEstimator{rto: min(initialRTO, limit), limit: limit}
}

func (e *rtoEstimator) sample(r time.Duration) {
	if !e.sampled {
		e.srtt, e.rttvar, e.sampled = r, r/2, true
	} else {
		diff := e.srtt - r
		if diff < 0 {
			diff = -diff
		}
		e.rttvar = (3*e.rttvar + diff) / 4
		e.srtt = (7*e.srtt + r) / 8
	}
	e.resetBackoff()
}

func (e *rtoEstimator) backoff() { e.rto = min(2*e.rto, e.limit) }

// probeTimeout is when a tail-loss probe goes out: twice the smoothed round
// trip, at least half the RTO floor, and only when that is sooner than the
// timeout itself.
func (e *rtoEstimator) probeTimeout() (time.Duration, bool) {
	pto := max(2*e.srtt, minRTO/2)
	return pto, e.sampled && pto < e.rto
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
		e.rto = min(e.srtt+max(minRTO, 4*e.rttvar), e.limit)
	} else {
		e.rto = min(initialRTO, e.limit)
	}
}

// maxAhead bounds how many blocks past the window a client that negotiated
// windowsize gets: one from a tail-loss probe, more from timeouts.
const maxAhead = 4

// sender runs one read transfer.
type sender struct {
	conn    transferConn
	src     source
	blksize int
	window  uint64
	// probeAhead lets the tail-loss probe send the block after a full
	// window, for clients that negotiated windowsize.
	probeAhead bool
	rto        rtoEstimator
	retries    int
	stop       <-chan struct{}
	// lastHeard is when the client last sent anything; patience is how long
	// a silent client is waited for before the transfer is given up.
	lastHeard time.Time
	patience  time.Duration

	pkt     []byte // DATA packet: 4-byte header, then the block
	in      []byte // the client's packets
	scratch []byte // outgoing ERROR packets
	sentMax uint64 // highest block number sent so far (absolute, not wrapped)
	// sends records, for each block that can be in flight (by number modulo
	// its length), when it last went out and whether that was its only
	// send: the ACK of a block sent once is a round-trip sample, the ACK
	// of a resent one is not, as it may answer either copy (Karn).
	sends []blockSend
	epoch time.Time // sends' times count from here, on the monotonic clock
	// afterGap is set while the blocks after a gap the client reported are
	// resent. It discarded or lost their earlier copies, so the ACK of a
	// resend answers the resend: it is a sample, as for a first send.
	afterGap bool
	stats    transferStats
}

type blockSend struct {
	at   time.Duration
	once bool
}

func newSender(conn transferConn, src source, p transferParams, retries int, stop <-chan struct{}) *sender {
	return &sender{
		conn:       conn,
		src:        src,
		blksize:    p.blksize,
		window:     uint64(p.windowsize),
		probeAhead: p.windowAware,
		rto:        newRTOEstimator(p.timeout),
		retries:    retries,
		patience:   time.Duration(retries) * p.timeout,
		stop:       stop,
		pkt:        make([]byte, 4+p.blksize),
		in:         make([]byte, 1024),
		sends:      make([]blockSend, p.windowsize+maxAhead),
		epoch:      time.Now(),
	}
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
		if timeouts++; w.givingUp(timeouts, false) {
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

// givingUp decides after a timeout. More than --retries timeouts in a row
// end the transfer once the final block is in flight: a client that has it
// is done and will not ask again, so its slot is freed at once. Before that,
// the client is also given a silence of --retries times the timeout cap, so
// one that pauses (writing flash, say) is not dropped for it.
func (w *sender) givingUp(timeouts int, finalInFlight bool) bool {
	if stopped(w.stop) {
		return true
	}
	return timeouts > w.retries && (finalInFlight || time.Since(w.lastHeard) >= w.patience)
}

// sendBlock reads block k (counted from 1, unwrapped) and sends it. It
// reports whether this was the last block.
func (w *sender) sendBlock(k uint64) (last bool, err error) {
	n, err := w.src.ReadAt(w.pkt[4:], int64(k-1)*int64(w.blksize))
	if err != nil && !errors.Is(err, io.EOF) {
		return false, w.fail(err)
	}
	w.pkt[0], w.pkt[1] = 0, opDATA
	w.pkt[2], w.pkt[3] = byte(k>>8), byte(k)
	sent := &w.sends[k%uint64(len(w.sends))]
	if k <= w.sentMax {
		w.stats.retransmits++
		sent.once = w.afterGap
	} else {
		w.sentMax = k
		w.stats.bytes += int64(n)
		sent.once = true
	}
	sent.at = time.Since(w.epoch)
	if err := w.conn.send(w.pkt[:4+n]); err != nil && !isRefused(err) {
		return false, err
	}
	return n < w.blksize, nil
}

// run sends the file. base is the oldest unacknowledged block, next the next
// one to send; last is the final block once a short read has found it.
func (w *sender) run() error {
	base, next, last := uint64(1), uint64(1), uint64(0)
	timeouts := 0
	// A gap the client reports is resent once its first block has had a
	// reorder window to arrive since it was sent: gapDue is when, unless
	// an ACK comes first.
	var gapDue time.Time
	// send sends block k and notes it as the final one when it is short.
	send := func(k uint64) error {
		isLast, err := w.sendBlock(k)
		if isLast {
			last = k
		}
		return err
	}
	if w.lastHeard.IsZero() {
		w.lastHeard = time.Now()
	}
	for {
		if stopped(w.stop) {
			return w.fail(errShutdown)
		}
		// A window, or up to the block a probe sent ahead of it: a
		// client that has taken that block answers only a block that new.
		for next < max(base+w.window, w.sentMax+1) && (last == 0 || next <= last) {
			if err := send(next); err != nil {
				return err
			}
			next++
		}
		w.afterGap = false
		sentAt := time.Now()
		deadline := sentAt.Add(w.rto.rto)
		// A tail-loss probe (as in TCP's RACK-TLP, RFC 8985): when the ACK
		// is late by twice the round trip, the round's final block goes out
		// again, costing one packet instead of a timeout: if it was lost
		// the client can finish, if the ACK was lost the repeat makes the
		// client ACK again. But atftp and U-Boot answer a repeated block
		// only once and then wait for their own timer, seconds long, so
		// when that answer is lost too they stall. A client that
		// negotiated windowsize (and so checks block order) therefore also
		// gets the block after the full window (ahead): a new block moves
		// it on. A lockstep client that never asked for windowsize may
		// store blocks by number (old U-Boot does); it never gets one.
		var probe time.Time
		if pto, ok := w.rto.probeTimeout(); ok && timeouts == 0 {
			probe = sentAt.Add(pto)
		}
		quiet, ahead := false, false
		for {
			wait := deadline
			if !probe.IsZero() {
				wait = probe
			}
			if !gapDue.IsZero() && gapDue.Before(wait) {
				wait = gapDue
			}
			blk, err := w.awaitAck(wait)
			if isTimeout(err) && wait.Equal(gapDue) {
				// The blocks after the gap had time to arrive and no ACK
				// followed: they were lost.
				gapDue, w.afterGap = time.Time{}, true
				next = base
				break
			}
			if isTimeout(err) && !probe.IsZero() {
				probe = time.Time{}
				if err := send(next - 1); err != nil {
					return err
				}
				if w.probeAhead && next == base+w.window && (last == 0 || next <= last) {
					if err := send(next); err != nil {
						return err
					}
					ahead = true
					next++
				}
				continue
			}
			if isTimeout(err) {
				w.stats.timeouts++
				if timeouts++; w.givingUp(timeouts, last != 0 && next > last) {
					return w.fail(errTimeout)
				}
				if timeouts > w.retries {
					// Some clients (atftp, U-Boot) answer a repeated block
					// once at most and then only on their own timer, which
					// every resend restarts. Fall silent so it can fire.
					quiet = true
					deadline = w.lastHeard.Add(w.patience)
					continue
				}
				w.rto.backoff()
				next, gapDue = base, time.Time{}
				// A client that negotiated windowsize may hold every block
				// sent, its ACKs lost, and (atftp, U-Boot) ignore repeats
				// after answering one: a new block first moves it on.
				if w.probeAhead && w.sentMax+1 < base+w.window+maxAhead && (last == 0 || w.sentMax < last) {
					if err := send(w.sentMax + 1); err != nil {
						return err
					}
				}
				break
			}
			if err != nil {
				return err
			}
			// Place the 16-bit number among the blocks sent. Zero is the
			// block before the window (a duplicate ACK); anything past what
			// was sent is stale. A timeout may have set next back while a
			// block ahead of the window was already out, so the bound is
			// the highest block sent, not next. Neither moves the window,
			// so a duplicate never triggers a resend, with two exceptions:
			// in the quiet phase it is the client's own timer asking for
			// the window, and after a block ahead it is the client saying
			// it lacks the window's first block.
			d := uint64(uint16(blk - uint16(base-1)))
			if d == 0 && (quiet || ahead) {
				if timeouts > 0 {
					w.rto.resetBackoff()
				}
				timeouts = 0
				next = base
				break
			}
			if d == 0 || d > w.sentMax-(base-1) {
				continue
			}
			acked := base - 1 + d
			if sent := w.sends[acked%uint64(len(w.sends))]; sent.once {
				w.sampleRTT(time.Since(w.epoch) - sent.at)
			} else if timeouts > 0 {
				// The client is there and answering: the backoff was for
				// losses, not for a longer round trip.
				w.rto.resetBackoff()
			}
			timeouts, gapDue = 0, time.Time{}
			if acked == last {
				return nil
			}
			base = acked + 1
			next = max(next, base)
			windowDone := acked == next-1 || ahead && acked == next-2
			if !windowDone {
				// The client saw a gap: what follows it was dropped. Or it
				// saw a late duplicate, which atftp also answers with an
				// ACK of its newest block; resending for each of those the
				// blocks still in flight would make their copies provoke
				// the next such ACK, a cascade without end. So, as in
				// RACK (RFC 8985), the missing block counts as lost once it
				// was sent a reorder window ago; a block sent more recently
				// may still arrive, and its ACK would make a resend moot.
				sent := w.sends[base%uint64(len(w.sends))]
				if due := w.epoch.Add(sent.at + w.rto.reorderWindow()); time.Now().Before(due) {
					gapDue = due
				} else {
					next, w.afterGap = base, true
				}
			}
			break
		}
	}
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
	stop     <-chan struct{}
	stats    transferStats

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
const (
	minLinger  = 7 * time.Second
	lingerPoll = 200 * time.Millisecond // how often ending is asked
)

// linger answers repeats of the final block for longer than the client's
// retransmission timeout, until ending reports that the server is closing.
func (r *receiver) linger(ending func() bool) {
	deadline := time.Now().Add(max(minLinger, r.params.timeout+r.params.timeout/2))
	for answers := 0; answers <= r.retries && !ending(); {
		wait := time.Now().Add(lingerPoll)
		if deadline.Before(wait) {
			wait = deadline
		}
		n, err := r.conn.recv(r.in, wait)
		if isTimeout(err) {
			if time.Now().Before(deadline) {
				continue
			}
			return
		}
		if err != nil {
			return
		}
		if n >= 4 && r.in[0] == 0 && r.in[1] == opDATA && uint16(r.in[2])<<8|uint16(r.in[3]) == r.final {
			answers++
			_ = r.conn.send(r.ack)
		}
	}
}
