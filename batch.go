// Batched datagram sends: a window of DATA packets, laid end to end in one
// buffer, leaves in as few system calls as the kernel allows. UDP GSO (one
// sendmsg with a UDP_SEGMENT control message, which the kernel cuts into
// datagrams) comes first; where the kernel or the route refuses it, sendmmsg
// (one call, a header per datagram); where that fails too, one sendmsg per
// datagram. A socket finds out once which of these works and keeps to it.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchMode is how a socket sends a batch; it only ever moves down the list.
type batchMode int32

const (
	batchGSO batchMode = iota
	batchMmsg
	batchSingle
)

func (m batchMode) String() string {
	return [...]string{"UDP GSO", "sendmmsg", "one send per datagram"}[m]
}

// Kernel bounds on one GSO send: at most 64 segments (UDP_MAX_SEGMENTS), and
// one IP packet's worth of bytes in all.
const (
	gsoMaxSegments = 64
	gsoMaxBytes    = 65000
)

// maxBatch is how many datagrams one sendmmsg call takes here.
const maxBatch = 64

// isRefused reports a send or receive failed by an ICMP port unreachable
// for an earlier send: the peer's port was closed when that one came.
func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// isUnreachable reports a net or host unreachable (ICMP, or a neighbour that
// did not answer) for an earlier send: errors a route may yet mend.
func isUnreachable(err error) bool {
	return errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)
}

// socketBatchMode is the batch mode of one socket. The listening socket's is
// shared by every --single-port transfer, so it is atomic.
type socketBatchMode struct{ mode atomic.Int32 }

// newSocketBatchMode starts a socket at first, the best mode the process
// found to work (see probeGSO).
func newSocketBatchMode(first batchMode) *socketBatchMode {
	m := &socketBatchMode{}
	m.mode.Store(int32(first))
	return m
}

// probeGSO sends one GSO batch of two datagrams over loopback to itself and
// checks that two of the right sizes arrive. A kernel without UDP GSO
// refuses the send; qemu-user on a host of the other byte order passes the
// segment size through unconverted, and the kernel then sends one datagram
// of the whole batch, which the probe catches before a client would.
func probeGSO() error {
	recv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	defer recv.Close()
	send, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	defer send.Close()
	const segment = 100
	batch := make([]byte, segment+segment/2)
	if _, _, err := send.WriteMsgUDPAddrPort(batch, appendSegmentSize(nil, segment), recv.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		return err
	}
	buf := make([]byte, len(batch)+1)
	for _, want := range []int{segment, segment / 2} {
		if err := recv.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
			return err
		}
		n, _, err := recv.ReadFromUDPAddrPort(buf)
		if err != nil {
			return err
		}
		if n != want {
			return fmt.Errorf("a GSO batch of %d+%d bytes arrived as a datagram of %d", segment, segment/2, n)
		}
	}
	return nil
}

func (s *socketBatchMode) get() batchMode { return batchMode(s.mode.Load()) }

// downgrade moves the socket to the next mode after one refused a batch,
// and says so once at debug.
func (s *socketBatchMode) downgrade(from batchMode, err error, log *slog.Logger) {
	if s.mode.CompareAndSwap(int32(from), int32(from+1)) {
		log.Debug("batched send refused, falling back", "refused", from.String(), "now", (from + 1).String(), "err", err)
	}
}

// batchRefused reports whether a send failed because of how it was batched
// rather than because of the network: the kernel lacks UDP GSO or
// sendmmsg, or the route cannot segment (no checksum offload, an MTU below
// the segment size).
func batchRefused(err error) bool {
	for _, e := range []syscall.Errno{unix.EIO, unix.EINVAL, unix.ENOPROTOOPT, unix.EOPNOTSUPP, unix.EMSGSIZE, unix.ENOSYS} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// batchSender sends batches on one socket to one peer. It owns its scratch
// buffers, so the per-window path allocates nothing.
type batchSender struct {
	// sendmsg sends one datagram, or one GSO batch, to the peer with oob.
	sendmsg func(b, oob []byte) error
	peer    netip.AddrPort
	pktinfo []byte // a control message every datagram carries, or nil
	mode    *socketBatchMode
	log     *slog.Logger

	oob []byte // pktinfo, then the UDP_SEGMENT message
	// connected: the socket is connected to the peer, and the datagrams
	// name no address, so that the kernel takes the route it keeps.
	connected bool
	raw       syscall.RawConn
	rawFn     func(fd uintptr) bool // sendmmsg's body, bound once
	// mmsg is sendmmsg's scratch, made when the mode first comes to it:
	// where GSO works (every Linux since 4.18) no transfer needs its 8 KB.
	mmsg *mmsgScratch
	// The batch rawFn sends, and what it found.
	pending [][]byte
	sent    int
	sendErr error
}

// mmsgScratch is what a batchSender's sendmmsg calls take.
type mmsgScratch struct {
	msgs     [maxBatch]mmsghdr // sendmmsg's headers
	iovs     [maxBatch]unix.Iovec
	segments [maxBatch][]byte
	name     [unix.SizeofSockaddrInet6]byte // the peer as a sockaddr
	// nlen is the length of name, 0 when the socket's family could not
	// be read: then this sender sends one datagram a call.
	nlen uint32
}

// mmsghdr is the kernel's struct mmsghdr; Go pads it as C does on every
// architecture (8-byte aligned on 64-bit, 4 on 32-bit).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// newBatchSender sends batches to peer on conn, a socket of Go's poller,
// connected to the peer or not.
func newBatchSender(conn *net.UDPConn, peer netip.AddrPort, pktinfo []byte, mode *socketBatchMode, log *slog.Logger) *batchSender {
	connected := conn.RemoteAddr() != nil
	to := peer
	if connected {
		to = netip.AddrPort{}
	}
	// A datagram without control messages goes by write or sendto, which
	// spare the kernel sendmsg's header and vector copies.
	sendmsg := func(b, oob []byte) error {
		switch {
		case len(oob) > 0:
			_, _, err := conn.WriteMsgUDPAddrPort(b, oob, to)
			return err
		case connected:
			_, err := conn.Write(b)
			return err
		}
		_, err := conn.WriteToUDPAddrPort(b, peer)
		return err
	}
	// SyscallConn fails only for a nil conn.
	raw, _ := conn.SyscallConn()
	b := newRawBatchSender(raw, sendmsg, peer, pktinfo, mode, log)
	b.connected = connected
	return b
}

// newRawBatchSender sends batches to peer on the socket raw reaches, each
// datagram (or GSO batch) through sendmsg.
func newRawBatchSender(raw syscall.RawConn, sendmsg func(b, oob []byte) error, peer netip.AddrPort, pktinfo []byte, mode *socketBatchMode, log *slog.Logger) *batchSender {
	b := &batchSender{
		sendmsg: sendmsg,
		raw:     raw,
		peer:    peer,
		pktinfo: pktinfo,
		mode:    mode,
		log:     log,
		oob:     make([]byte, len(pktinfo), len(pktinfo)+unix.CmsgSpace(2)),
	}
	copy(b.oob, pktinfo)
	b.rawFn = b.sendmmsg
	return b
}

// mmsgReady makes the sendmmsg scratch on first use, and reports whether
// the datagrams can name the peer: a connected socket's need no name.
func (b *batchSender) mmsgReady() bool {
	if b.mmsg == nil {
		b.mmsg = &mmsgScratch{}
		if !b.connected {
			var err error
			if b.mmsg.nlen, err = putSockaddr(b.mmsg.name[:], b.peer, b.raw); err != nil {
				// No sockaddr for sendmmsg: this sender skips that mode.
				b.log.Debug("sendmmsg unavailable", "err", err)
			}
		}
	}
	return b.connected || b.mmsg.nlen > 0
}

// appendSegmentSize appends a UDP_SEGMENT control message for segments of
// size bytes.
func appendSegmentSize(oob []byte, size int) []byte {
	start := len(oob)
	oob = slices.Grow(oob, unix.CmsgSpace(2))[:start+unix.CmsgSpace(2)]
	clear(oob[start:])
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[start]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&oob[start+unix.CmsgLen(0)])) = uint16(size)
	return oob
}

// putSockaddr writes peer as a sockaddr of the socket's family (an IPv4
// peer of an IPv6 socket as a mapped address, a link-local one with its
// zone's index) and returns its length.
func putSockaddr(dst []byte, peer netip.AddrPort, raw syscall.RawConn) (uint32, error) {
	family, err := 0, error(nil)
	if cerr := raw.Control(func(fd uintptr) {
		family, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
	}); cerr != nil {
		return 0, cerr
	}
	if err != nil {
		return 0, err
	}
	port := [2]byte{byte(peer.Port() >> 8), byte(peer.Port())}
	if family == unix.AF_INET {
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&dst[0]))
		sa.Family, sa.Addr = unix.AF_INET, peer.Addr().Unmap().As4()
		*(*[2]byte)(unsafe.Pointer(&sa.Port)) = port
		return unix.SizeofSockaddrInet4, nil
	}
	sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(&dst[0]))
	sa.Family, sa.Addr = unix.AF_INET6, peer.Addr().As16()
	*(*[2]byte)(unsafe.Pointer(&sa.Port)) = port
	index, err := zoneIndex(peer.Addr().Zone())
	if err != nil {
		return 0, err
	}
	sa.Scope_id = index
	return unix.SizeofSockaddrInet6, nil
}

// zoneIndex is the interface index of an IPv6 zone, written as the index
// or as the interface's name; 0 for none.
func zoneIndex(zone string) (uint32, error) {
	if zone == "" {
		return 0, nil
	}
	if index, err := strconv.Atoi(zone); err == nil {
		return uint32(index), nil
	}
	ifi, err := net.InterfaceByName(zone)
	if err != nil {
		return 0, err
	}
	return uint32(ifi.Index), nil
}

// send sends buf as datagrams of segSize bytes each, the last one possibly
// shorter, and returns how many system calls that took.
func (b *batchSender) send(buf []byte, segSize int) (calls int, err error) {
	for len(buf) > 0 {
		mode := b.mode.get()
		n := len(buf)
		calls++
		switch mode {
		case batchGSO:
			n = min(n, segSize*min(gsoMaxSegments, max(1, gsoMaxBytes/segSize)))
			err = b.sendGSO(buf[:n], segSize)
		case batchMmsg:
			if !b.mmsgReady() {
				n = min(n, segSize)
				err = b.sendmsg(buf[:n], b.pktinfo)
				break
			}
			n = min(n, segSize*maxBatch)
			err = b.sendMmsg(buf[:n], segSize)
		default:
			n = min(n, segSize)
			err = b.sendmsg(buf[:n], b.pktinfo)
		}
		switch {
		case err == nil || isRefused(err):
			buf = buf[n:]
		case mode != batchSingle && batchRefused(err):
			b.mode.downgrade(mode, err, b.log)
		default:
			return calls, err
		}
	}
	return calls, nil
}

func (b *batchSender) sendGSO(buf []byte, segSize int) error {
	if len(buf) <= segSize {
		return b.sendmsg(buf, b.pktinfo)
	}
	b.oob = appendSegmentSize(b.oob[:len(b.pktinfo)], segSize)
	return b.sendmsg(buf, b.oob)
}

// sendMmsg sends up to maxBatch datagrams with sendmmsg, calling again for
// what a short count left.
func (b *batchSender) sendMmsg(buf []byte, segSize int) error {
	b.pending = b.mmsg.segments[:0]
	for off := 0; off < len(buf); off += segSize {
		b.pending = append(b.pending, buf[off:min(off+segSize, len(buf))])
	}
	for len(b.pending) > 0 {
		b.sent, b.sendErr = 0, nil
		if err := b.raw.Write(b.rawFn); err != nil {
			return err
		}
		if b.sendErr != nil {
			return b.sendErr
		}
		b.pending = b.pending[b.sent:]
	}
	return nil
}

// sendmmsg is the body of one sendmmsg call on fd, for raw.Write: false asks
// to wait until the socket is writable.
func (b *batchSender) sendmmsg(fd uintptr) bool {
	m := b.mmsg
	for i, seg := range b.pending {
		m.iovs[i].Base = &seg[0]
		m.iovs[i].SetLen(len(seg))
		h := &m.msgs[i].hdr
		*h = unix.Msghdr{Iov: &m.iovs[i]}
		if !b.connected {
			h.Name, h.Namelen = &m.name[0], m.nlen
		}
		h.SetIovlen(1)
		if len(b.pktinfo) > 0 {
			h.Control = &b.pktinfo[0]
			h.SetControllen(len(b.pktinfo))
		}
	}
	n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&m.msgs[0])), uintptr(len(b.pending)), 0, 0, 0)
	switch {
	case errno == unix.EAGAIN:
		return false
	case errno != 0:
		b.sendErr = errno
	default:
		b.sent = int(n)
	}
	return true
}
