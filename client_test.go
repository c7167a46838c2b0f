// A TFTP client for the tests: RRQ and WRQ with options, an RFC 7440
// receiver that ACKs at the end of each window or at the first gap, and
// retransmission on its own timer, so it can run through a lossy relay.
package main

import (
	"errors"
	"fmt"
	"math/rand"
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
	res := &clientResult{}
	blksize, window := 512, 1
	var peer netip.AddrPort
	var lastAck []byte // nil until the first ACK: resend the RRQ instead
	expected := uint16(1)
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
				if blk == expected-1 && lastAck != nil {
					if _, err := conn.WriteToUDPAddrPort(lastAck, peer); err != nil {
						return res, err
					}
				}
				continue
			}
			if blk != expected {
				if !gapAcked {
					gapAcked = true
					if err := ack(expected - 1); err != nil {
						return res, err
					}
				}
				continue
			}
			retries = 0
			gapAcked = false
			if blk == 1 && o.firstData != nil {
				close(o.firstData)
			}
			res.data = append(res.data, pkt[4:]...)
			expected++
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

// tftpPut sends data with a WRQ, one block per ACK (windowsize 1).
func tftpPut(server netip.AddrPort, name string, data []byte, o clientOptions) error {
	if o.retry == 0 {
		o.retry = 100 * time.Millisecond
	}
	conn, err := dialClientFrom(server, o.local)
	if err != nil {
		return err
	}
	defer conn.Close()
	wrq := o.requestPacket(opWRQ, name)
	if _, err := conn.WriteToUDPAddrPort(wrq, server); err != nil {
		return err
	}
	blksize := 512
	var peer netip.AddrPort
	buf := make([]byte, 1024)
	var out []byte // the packet to resend on timeout
	sent := uint16(0)
	for retries := 0; retries < 50; {
		conn.SetReadDeadline(time.Now().Add(o.retry))
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if isTimeout(err) {
			retries++
			if out == nil {
				_, err = conn.WriteToUDPAddrPort(wrq, server)
			} else {
				_, err = conn.WriteToUDPAddrPort(out, peer)
			}
			if err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		peer = unmap(from)
		pkt := buf[:n]
		switch {
		case pkt[1] == opERROR:
			return errorFromPacket(pkt)
		case pkt[1] == opOACK && sent == 0:
			if v, ok := parseOACK(pkt)["blksize"]; ok {
				blksize, _ = strconv.Atoi(v)
			}
		case pkt[1] == opACK && uint16(pkt[2])<<8|uint16(pkt[3]) == sent:
		default:
			continue
		}
		off := int(sent) * blksize
		if out != nil && len(out)-4 < blksize {
			return nil // the final block is acknowledged
		}
		retries = 0
		sent++
		end := min(off+blksize, len(data))
		out = append([]byte{0, opDATA, byte(sent >> 8), byte(sent)}, data[off:end]...)
		if _, err := conn.WriteToUDPAddrPort(out, peer); err != nil {
			return err
		}
	}
	return errors.New("put: too many retries")
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

// randomBytes is n bytes from a seeded generator: the same for a seed.
func randomBytes(n int, seed int64) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}
