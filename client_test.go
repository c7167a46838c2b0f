// The project's own TFTP client for the tests: RRQ and WRQ with options, an
// RFC 7440 receiver that ACKs at the end of each window or at the first gap,
// an RFC 7440 sender whose window is what the OACK grants (one block, a
// lockstep upload, when none is), and retransmission on its own timer, so it
// can run through a lossy relay. Beside it the clients for what that one
// cannot do: a download and an upload the test holds block by block, a
// socket that exchanges single packets, and a client that fetches without
// allocating, for benchmarks.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

type clientOptions struct {
	blksize, windowsize, timeout int // 0: not asked
	tsize                        bool
	netascii                     bool
	extra                        []option        // sent as given, after the others
	retry                        time.Duration   // resend interval; default 100 ms
	maxRetries                   int             // default 50
	ackDelay                     time.Duration   // pause before each ACK, to pace a transfer
	giveUpAfter                  time.Duration   // bound on the whole transfer; 0 for none
	firstData                    chan<- struct{} // closed when the first block arrived
	local                        netip.Addr      // address to send from; any when unset
}

type clientResult struct {
	data []byte
	oack map[string]string
	// numberAfter65535 is the number the block after block 65535 came
	// with, -1 when there was none.
	numberAfter65535 int
}

// wireBlock is absolute block k's number on the wire when the block after
// 65535 is numbered rollover (the rollover option: 0 or 1).
func wireBlock(k uint64, rollover uint16) uint16 {
	if k <= 65535 {
		return uint16(k)
	}
	return uint16(uint64(rollover) + (k-65536)%(65536-uint64(rollover)))
}

// oackRollover is the block number after 65535 an OACK grants.
func oackRollover(oack map[string]string) uint16 {
	if oack["rollover"] == "1" {
		return 1
	}
	return 0
}

func (o clientOptions) requestPacket(op uint16, name string) []byte {
	mode := "octet"
	if o.netascii {
		mode = "netascii"
	}
	b := append([]byte{0, byte(op)}, name...)
	b = append(append(b, 0), mode...)
	b = append(b, 0)
	add := func(k, v string) {
		b = append(append(append(append(b, k...), 0), v...), 0)
	}
	if o.blksize > 0 {
		add("blksize", strconv.Itoa(o.blksize))
	}
	if o.windowsize > 0 {
		add("windowsize", strconv.Itoa(o.windowsize))
	}
	if o.timeout > 0 {
		add("timeout", strconv.Itoa(o.timeout))
	}
	if o.tsize {
		add("tsize", "0")
	}
	for _, e := range o.extra {
		add(e.name, e.value)
	}
	return b
}

func parseOACK(b []byte) map[string]string {
	m := map[string]string{}
	fields := splitNUL(b[2:])
	for i := 0; i+1 < len(fields); i += 2 {
		m[fields[i]] = fields[i+1]
	}
	return m
}

func splitNUL(b []byte) []string {
	var out []string
	start := 0
	for i, c := range b {
		if c == 0 {
			out = append(out, string(b[start:i]))
			start = i + 1
		}
	}
	return out
}

func errorFromPacket(b []byte) *wireError {
	msg := ""
	if len(b) > 4 {
		msg = string(b[4 : len(b)-1])
	}
	return &wireError{code: uint16(b[2])<<8 | uint16(b[3]), msg: msg}
}

func dialClient(server netip.AddrPort) (*net.UDPConn, error) {
	return dialClientFrom(server, netip.Addr{})
}

// dialClientFrom sends from a chosen local address, any when unset.
func dialClientFrom(server netip.AddrPort, local netip.Addr) (*net.UDPConn, error) {
	network := "udp4"
	if server.Addr().Is6() {
		network = "udp6"
	}
	var laddr *net.UDPAddr
	if local.IsValid() {
		laddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0))
	}
	return net.ListenUDP(network, laddr)
}

// withDefaults fills in the resend interval and the retry bound.
func (o clientOptions) withDefaults() clientOptions {
	if o.retry == 0 {
		o.retry = 100 * time.Millisecond
	}
	if o.maxRetries == 0 {
		o.maxRetries = 50
	}
	return o
}

// tftpGet fetches name. A server ERROR comes back as *wireError.
func tftpGet(server netip.AddrPort, name string, o clientOptions) (*clientResult, error) {
	o = o.withDefaults()
	conn, err := dialClientFrom(server, o.local)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	rrq := o.requestPacket(opRRQ, name)
	if _, err := conn.WriteToUDPAddrPort(rrq, server); err != nil {
		return nil, err
	}
	res := &clientResult{numberAfter65535: -1}
	blksize, window := 512, 1
	received := uint64(0) // blocks taken in order; the next is received+1
	var peer netip.AddrPort
	var lastAck []byte // nil until the first ACK: resend the RRQ instead
	expected := uint16(1)
	previous := func() uint16 { return wireBlock(received, oackRollover(res.oack)) }
	sinceAck, retries := 0, 0
	gapAcked := false
	buf := make([]byte, 65536+4)
	ack := func(blk uint16) error {
		time.Sleep(o.ackDelay)
		lastAck = []byte{0, opACK, byte(blk >> 8), byte(blk)}
		sinceAck = 0
		_, err := conn.WriteToUDPAddrPort(lastAck, peer)
		return err
	}
	started := time.Now()
	for {
		if o.giveUpAfter > 0 && time.Since(started) > o.giveUpAfter {
			return res, fmt.Errorf("client gave up after %v (%d bytes received)", o.giveUpAfter, len(res.data))
		}
		conn.SetReadDeadline(time.Now().Add(o.retry))
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if isTimeout(err) {
			if retries++; retries > o.maxRetries {
				return res, fmt.Errorf("client gave up after %d retries (%d bytes received)", o.maxRetries, len(res.data))
			}
			if lastAck == nil {
				_, err = conn.WriteToUDPAddrPort(rrq, server)
			} else {
				_, err = conn.WriteToUDPAddrPort(lastAck, peer)
			}
			if err != nil {
				return res, err
			}
			continue
		}
		if err != nil {
			return res, err
		}
		from = unmap(from)
		if !peer.IsValid() {
			peer = from
		} else if from != peer {
			continue
		}
		if n < 4 {
			return res, errors.New("runt packet from server")
		}
		pkt := buf[:n]
		switch pkt[1] {
		case opERROR:
			return res, errorFromPacket(pkt)
		case opOACK:
			if res.oack == nil {
				res.oack = parseOACK(pkt)
				if v, ok := res.oack["blksize"]; ok {
					blksize, _ = strconv.Atoi(v)
				}
				if v, ok := res.oack["windowsize"]; ok {
					window, _ = strconv.Atoi(v)
				}
			}
			if expected == 1 {
				if err := ack(0); err != nil {
					return res, err
				}
			}
		case opDATA:
			blk := uint16(pkt[2])<<8 | uint16(pkt[3])
			if int16(blk-expected) < 0 {
				// A block already received: its ACK may have been lost, so
				// the newest one is acknowledged again, as tftp-hpa does.
				if blk == previous() && lastAck != nil {
					if _, err := conn.WriteToUDPAddrPort(lastAck, peer); err != nil {
						return res, err
					}
				}
				continue
			}
			if blk != expected {
				if !gapAcked {
					gapAcked = true
					if err := ack(previous()); err != nil {
						return res, err
					}
				}
				continue
			}
			retries = 0
			gapAcked = false
			if received == 0 && o.firstData != nil {
				close(o.firstData)
			}
			res.data = append(res.data, pkt[4:]...)
			if received++; received == 65536 {
				res.numberAfter65535 = int(blk)
			}
			expected = wireBlock(received+1, oackRollover(res.oack))
			sinceAck++
			final := n-4 < blksize
			if final || sinceAck >= window {
				if err := ack(blk); err != nil {
					return res, err
				}
			}
			if final {
				return res, nil
			}
		default:
			return res, fmt.Errorf("unexpected opcode %d", pkt[1])
		}
	}
}

// tftpPut sends data with a WRQ as an RFC 7440 sender: a window of blocks,
// then a wait; an ACK slides the window to the block after the one it
// names, and a timeout resends from the oldest unacknowledged block. The
// window is what the server's OACK grants for o.windowsize, one block (a
// lockstep RFC 1350 upload) when none is asked or granted; o.tsize sends the
// data's size. It returns the server's OACK (nil for none); a server ERROR
// comes back as *wireError.
func tftpPut(server netip.AddrPort, name string, data []byte, o clientOptions) (map[string]string, error) {
	o = o.withDefaults()
	conn, err := dialClientFrom(server, o.local)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	wrq := o.requestPacket(opWRQ, name)
	if o.tsize {
		// requestPacket sends tsize 0, the form of a read request.
		wrq = bytes.Replace(wrq, []byte("tsize\x000\x00"), []byte("tsize\x00"+strconv.Itoa(len(data))+"\x00"), 1)
	}
	buf := make([]byte, 2048)
	var peer netip.AddrPort
	var oack map[string]string
	blksize, window := 512, 1
	// The answer to the request: an OACK, ACK 0 or an ERROR.
	for retries := 0; !peer.IsValid(); {
		if _, err := conn.WriteToUDPAddrPort(wrq, server); err != nil {
			return nil, err
		}
		conn.SetReadDeadline(time.Now().Add(o.retry))
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if isTimeout(err) {
			if retries++; retries > o.maxRetries {
				return nil, errors.New("put: no answer to the request")
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		switch {
		case n >= 4 && buf[1] == opERROR:
			return nil, errorFromPacket(buf[:n])
		case n >= 2 && buf[1] == opOACK:
			oack = parseOACK(buf[:n])
			if v, ok := oack["blksize"]; ok {
				blksize, _ = strconv.Atoi(v)
			}
			if v, ok := oack["windowsize"]; ok {
				window, _ = strconv.Atoi(v)
			}
		case n >= 4 && buf[1] == opACK && buf[2] == 0 && buf[3] == 0:
		default:
			return nil, fmt.Errorf("put: unexpected answer %q", buf[:n])
		}
		peer = unmap(from)
	}
	total := uint64(len(data)/blksize + 1)
	pkt := make([]byte, 4+blksize)
	base := uint64(1) // the oldest unacknowledged block, counted from 1
	started := time.Now()
	for retries := 0; base <= total; {
		if o.giveUpAfter > 0 && time.Since(started) > o.giveUpAfter {
			return oack, fmt.Errorf("put gave up after %v at block %d", o.giveUpAfter, base)
		}
		for k := base; k < base+uint64(window) && k <= total; k++ {
			off := int(k-1) * blksize
			end := min(off+blksize, len(data))
			blk := wireBlock(k, oackRollover(oack))
			pkt = append(pkt[:0], 0, opDATA, byte(blk>>8), byte(blk))
			pkt = append(pkt, data[off:end]...)
			if _, err := conn.WriteToUDPAddrPort(pkt, peer); err != nil {
				return oack, err
			}
		}
		for {
			conn.SetReadDeadline(time.Now().Add(o.retry))
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if isTimeout(err) {
				if retries++; retries > o.maxRetries {
					return oack, fmt.Errorf("put gave up after %d retries at block %d", o.maxRetries, base)
				}
				break
			}
			if err != nil {
				return oack, err
			}
			if unmap(from) != peer || n < 4 {
				continue
			}
			if buf[1] == opERROR {
				return oack, errorFromPacket(buf[:n])
			}
			if buf[1] != opACK {
				continue
			}
			d := uint64(0) // how far past base-1 the ACK is; 0 for a duplicate or stale one
			for k := base; k < base+uint64(window) && k <= total; k++ {
				if wireBlock(k, oackRollover(oack)) == uint16(buf[2])<<8|uint16(buf[3]) {
					d = k - base + 1
				}
			}
			if d == 0 {
				continue
			}
			base += d
			retries = 0
			break
		}
	}
	return oack, nil
}

// wantWireError fails unless err is a TFTP ERROR with code.
func wantWireError(t testing.TB, err error, code uint16) *wireError {
	t.Helper()
	var we *wireError
	if !errors.As(err, &we) || we.code != code {
		t.Fatalf("got %v, want a TFTP ERROR with code %d", err, code)
	}
	return we
}

// lockstepPut is an upload the test drives block by block.
type lockstepPut struct {
	put  *rawClient
	sent []byte
}

// rawClient is a client socket that exchanges single packets with a server.
type rawClient struct {
	t    testing.TB
	send func(pkt []byte)
	recv func() []byte
	peer netip.AddrPort
}

func newRawClient(t testing.TB, server netip.AddrPort) *rawClient {
	conn, err := dialClient(server)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &rawClient{t: t, peer: server}
	buf := make([]byte, 65536)
	c.send = func(pkt []byte) {
		if _, err := conn.WriteToUDPAddrPort(pkt, c.peer); err != nil {
			t.Fatal(err)
		}
	}
	c.recv = func() []byte {
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("no answer from the server: %v", err)
		}
		c.peer = unmap(from)
		return buf[:n]
	}
	return c
}

// expectAck reads the next packet and fails unless it is ACK blk.
func (c *rawClient) expectAck(blk uint16) {
	c.t.Helper()
	// A client that paused (the tests hold uploads half-done on purpose)
	// gets the ACK of its last block again on each of the server's
	// timeouts: those repeats may come before the ACK this waits for.
	for repeats := 0; ; repeats++ {
		pkt := c.recv()
		got, ok := parseAck(pkt)
		if ok && got == blk-1 && repeats < 10 {
			continue
		}
		if !ok || got != blk {
			c.t.Fatalf("got %q, want ACK %d", pkt, blk)
		}
		return
	}
}

// startLockstepPut sends a WRQ and ten full blocks, each acknowledged, and
// stops before the final block.
func startLockstepPut(t testing.TB, server netip.AddrPort, name string) *lockstepPut {
	c := newRawClient(t, server)
	c.send((clientOptions{}).requestPacket(opWRQ, name))
	c.expectAck(0)
	p := &lockstepPut{put: c}
	for blk := uint16(1); blk <= 10; blk++ {
		block := randomBytes(512, int64(blk))
		p.sent = append(p.sent, block...)
		c.send(append([]byte{0, opDATA, 0, byte(blk)}, block...))
		c.expectAck(blk)
	}
	return p
}

// finish sends a short final block and returns everything sent.
func (p *lockstepPut) finish(t testing.TB) []byte {
	p.put.send([]byte{0, opDATA, 0, 11, 'e', 'n', 'd'})
	p.put.expectAck(11)
	return append(p.sent, "end"...)
}

// lockstep is a window-1 client driven block by block, to hold a transfer
// at a point the test chooses.
type lockstep struct {
	conn   *net.UDPConn
	server netip.AddrPort
	peer   netip.AddrPort
	rrq    []byte
	next   uint16
	data   []byte
	buf    []byte
}

func startLockstep(t *testing.T, server netip.AddrPort, name string) *lockstep {
	conn, err := dialClient(server)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	l := &lockstep{conn: conn, server: server, rrq: clientOptions{}.requestPacket(opRRQ, name), next: 1, buf: make([]byte, 1024)}
	if _, err := conn.WriteToUDPAddrPort(l.rrq, server); err != nil {
		t.Fatal(err)
	}
	return l
}

// block waits up to wait for the next DATA, ACKs it and reports whether it
// was the last one. A server ERROR is returned as *wireError.
func (l *lockstep) block(wait time.Duration) (last bool, err error) {
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		l.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, from, err := l.conn.ReadFromUDPAddrPort(l.buf)
		if isTimeout(err) {
			continue
		}
		if err != nil {
			return false, err
		}
		switch {
		case n >= 4 && l.buf[1] == opERROR:
			return false, errorFromPacket(l.buf[:n])
		case n < 4 || l.buf[1] != opDATA || uint16(l.buf[2])<<8|uint16(l.buf[3]) != l.next:
			continue
		}
		l.peer = from
		l.data = append(l.data, l.buf[4:n]...)
		l.conn.WriteToUDPAddrPort([]byte{0, opACK, l.buf[2], l.buf[3]}, from)
		l.next++
		return n-4 < 512, nil
	}
	return false, fmt.Errorf("no block %d within %v", l.next, wait)
}

func (l *lockstep) rest(wait time.Duration) ([]byte, error) {
	for {
		last, err := l.block(wait)
		if err != nil || last {
			return l.data, err
		}
	}
}

// benchClient fetches a file over and over without allocating, checking
// every block against the source in place, so that the allocations a
// benchmark reports are the server's.
type benchClient struct {
	conn *net.UDPConn
	rrq  []byte
	buf  []byte
	ack  []byte
}

func newBenchClient(b testing.TB, server netip.AddrPort, name string, blksize, window int) *benchClient {
	conn, err := dialClient(server)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	o := clientOptions{blksize: blksize, windowsize: window}
	return &benchClient{conn: conn, rrq: o.requestPacket(opRRQ, name), buf: make([]byte, 65536), ack: make([]byte, 4)}
}

// get fetches the file once and returns the number of DATA packets and the
// blksize and windowsize the server granted.
func (c *benchClient) get(server netip.AddrPort, want []byte) (packets, blksize, window int, err error) {
	if _, err := c.conn.WriteToUDPAddrPort(c.rrq, server); err != nil {
		return 0, 0, 0, err
	}
	blksize, window = 512, 1
	var peer netip.AddrPort
	expected, sinceAck, off, resends := uint16(1), 0, 0, 0
	for {
		c.conn.SetReadDeadline(time.Now().Add(time.Second))
		n, from, err := c.conn.ReadFromUDPAddrPort(c.buf)
		if isTimeout(err) && peer.IsValid() && resends < 10 {
			resends++
			c.conn.WriteToUDPAddrPort(c.ack, peer) // lost on loopback: ask again
			continue
		}
		if err != nil {
			return packets, blksize, window, err
		}
		switch {
		case !peer.IsValid() && n >= 2 && c.buf[1] == opDATA:
			// The request asks for blksize, so the transfer begins with
			// an OACK: a DATA before it is an earlier transfer's final
			// block, resent before that server heard the ACK, and its
			// port may be this one's again.
			continue
		case peer.IsValid() && from != peer:
			continue // not this transfer's (RFC 1350's TID)
		}
		peer = from
		switch c.buf[1] {
		case opOACK:
			for _, kv := range [][2]string{{"blksize", ""}, {"windowsize", ""}} {
				if i := bytes.Index(c.buf[:n], []byte(kv[0]+"\x00")); i >= 0 {
					v := c.buf[i+len(kv[0])+1 : n]
					v = v[:bytes.IndexByte(v, 0)]
					x, _ := strconv.Atoi(string(v))
					if kv[0] == "blksize" {
						blksize = x
					} else {
						window = x
					}
				}
			}
			c.sendAck(0, peer)
		case opDATA:
			if uint16(c.buf[2])<<8|uint16(c.buf[3]) != expected {
				c.sendAck(expected-1, peer)
				continue
			}
			data := c.buf[4:n]
			if !bytes.Equal(data, want[off:min(off+blksize, len(want))]) {
				return packets, blksize, window, errors.New("received bytes differ from the source")
			}
			off += len(data)
			packets++
			expected++
			sinceAck++
			final := len(data) < blksize
			if final || sinceAck == window {
				c.sendAck(expected-1, peer)
				sinceAck = 0
			}
			if final {
				if off != len(want) {
					return packets, blksize, window, fmt.Errorf("received %d bytes, want %d", off, len(want))
				}
				return packets, blksize, window, nil
			}
		default:
			return packets, blksize, window, fmt.Errorf("unexpected packet %q", c.buf[:min(n, 40)])
		}
	}
}

func (c *benchClient) sendAck(blk uint16, peer netip.AddrPort) {
	c.ack[0], c.ack[1], c.ack[2], c.ack[3] = 0, opACK, byte(blk>>8), byte(blk)
	c.conn.WriteToUDPAddrPort(c.ack, peer)
}
