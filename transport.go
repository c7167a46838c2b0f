// A session's datagram path to its client: a transfer's own UDP socket, or
// the listening socket in --single-port mode; where a request arrived
// (IP_PKTINFO / IPV6_PKTINFO) and how large a block fits its interface.
package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// transferConn is a session's view of the network: a datagram path to one
// peer. recv returns only the peer's datagrams; what other addresses send is
// answered with ERROR 5 by the implementation.
type transferConn interface {
	send(b []byte) error
	// sendBatch sends b as datagrams of segSize bytes, the last one
	// possibly shorter, in as few system calls as it can, and returns how
	// many it took.
	sendBatch(b []byte, segSize int) (int, error)
	recv(b []byte, deadline time.Time) (int, error)
	localAddr() netip.AddrPort
	close() error
}

// socketConn is a transfer's own UDP socket on a fresh port.
type socketConn struct {
	conn     *net.UDPConn
	peer     netip.AddrPort
	transfer *activeTransfer
	scratch  []byte
	batch    *batchSender
	// armed is the socket's read deadline, which moves only when a wait
	// must end sooner: every ACK pushes the next deadline later, and
	// moving a socket's deadline costs the runtime's timer work each time.
	armed time.Time
}

func (c *socketConn) send(b []byte) error {
	_, err := c.conn.WriteToUDPAddrPort(b, c.peer)
	return err
}

func (c *socketConn) sendBatch(b []byte, segSize int) (int, error) { return c.batch.send(b, segSize) }

// recv waits for the peer's next datagram until deadline, or until the
// transfer is ended (superseded or shut down): ending it moves the socket's
// deadline into the past, which wakes a read that is blocked.
func (c *socketConn) recv(b []byte, deadline time.Time) (int, error) {
	if c.armed.IsZero() || deadline.Before(c.armed) {
		if err := c.arm(deadline); err != nil {
			return 0, err
		}
	}
	for {
		if err := c.transfer.endReason(); err != nil {
			return 0, err
		}
		n, from, err := c.conn.ReadFromUDPAddrPort(b)
		if err != nil {
			if isRefused(err) {
				// An ICMP error from an earlier send; the peer may still answer.
				continue
			}
			if why := c.transfer.endReason(); why != nil {
				return 0, why
			}
			if isTimeout(err) && time.Now().Before(deadline) {
				// An earlier wait's deadline: this one's is later.
				if err := c.arm(deadline); err != nil {
					return 0, err
				}
				continue
			}
			return 0, err
		}
		if unmap(from) == c.peer {
			return n, nil
		}
		c.scratch = appendError(c.scratch[:0], errUnknownTID)
		_, _ = c.conn.WriteToUDPAddrPort(c.scratch, from)
	}
}

func (c *socketConn) arm(deadline time.Time) error {
	c.armed = deadline
	return c.conn.SetReadDeadline(deadline)
}

func (c *socketConn) localAddr() netip.AddrPort {
	return c.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

func (c *socketConn) close() error { return c.conn.Close() }

// sharedConn is a transfer in --single-port mode: it answers from the
// listening socket, from the address the request was sent to, and the
// listener hands it the client's datagrams through the transfer's inbox.
type sharedConn struct {
	srv      *server
	peer     netip.AddrPort
	local    netip.Addr // the address the request was sent to
	oob      []byte     // IP_PKTINFO / IPV6_PKTINFO making it the source address
	transfer *activeTransfer
	timer    *time.Timer
	batch    *batchSender
}

func (c *sharedConn) send(b []byte) error {
	_, _, err := c.srv.conn.WriteMsgUDPAddrPort(b, c.oob, c.peer)
	return err
}

func (c *sharedConn) sendBatch(b []byte, segSize int) (int, error) { return c.batch.send(b, segSize) }

func (c *sharedConn) recv(b []byte, deadline time.Time) (int, error) {
	c.timer.Reset(time.Until(deadline))
	defer c.timer.Stop()
	select {
	case pkt := <-c.transfer.inbox:
		n := copy(b, pkt)
		c.transfer.free <- pkt[:cap(pkt)]
		return n, nil
	case <-c.timer.C:
		return 0, os.ErrDeadlineExceeded
	case <-c.transfer.ended:
		return 0, c.transfer.why
	}
}

func (c *sharedConn) localAddr() netip.AddrPort {
	listener := c.srv.conn.LocalAddr().(*net.UDPAddr).AddrPort()
	if !c.local.IsValid() {
		return listener
	}
	return netip.AddrPortFrom(c.local, listener.Port())
}

func (c *sharedConn) close() error { return nil }

// errSuperseded ends a transfer without a word: the same client port has
// sent a new request, so the client has left this transfer, and anything
// more from it would reach the new one.
var errSuperseded = errors.New("superseded by a new request from the same client port")

// sharedInboxSize is how many of a client's datagrams a single-port transfer
// may have waiting; more are dropped, as a full socket buffer would.
const sharedInboxSize = 8

func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// isTimeout reports a passed read deadline. It runs once per ACK, so it must
// not allocate (errors.As with a net.Error target would).
func isTimeout(err error) bool {
	return err != nil && errors.Is(err, os.ErrDeadlineExceeded)
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// destination is where a request arrived: the local address to answer from
// and the interface it came in on.
type destination struct {
	addr    netip.Addr
	ifindex int
}

// parsePktinfo reads the local address of a request from IP_PKTINFO or
// IPV6_PKTINFO. For IPv4 it prefers ipi_spec_dst, the interface's own address,
// so a request sent to a broadcast address is answered from a unicast one.
func parsePktinfo(oob []byte) destination {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return destination{}
	}
	var d destination
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= unix.SizeofInet4Pktinfo:
			spec := netip.AddrFrom4([4]byte(m.Data[4:8]))
			addr := netip.AddrFrom4([4]byte(m.Data[8:12]))
			if !spec.IsUnspecified() {
				addr = spec
			}
			// IP_PKTINFO is the better source for IPv4: it wins over a
			// v4-mapped IPV6_PKTINFO.
			return destination{addr: addr, ifindex: int(int32(binary.NativeEndian.Uint32(m.Data[0:4])))}
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= unix.SizeofInet6Pktinfo:
			d.addr = netip.AddrFrom16([16]byte(m.Data[0:16])).Unmap()
			d.ifindex = int(binary.NativeEndian.Uint32(m.Data[16:20]))
		}
	}
	return d
}

// enablePktinfo asks the kernel for the destination address of each request.
// On a dual-stack socket both options are set: IPv4 requests then carry
// IP_PKTINFO with ipi_spec_dst.
func enablePktinfo(conn *net.UDPConn) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var v4err, v6err error
	if cerr := raw.Control(func(fd uintptr) {
		v4err = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		v6err = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
	}); cerr != nil {
		return cerr
	}
	if v4err != nil && v6err != nil {
		return fmt.Errorf("IP_PKTINFO: %w", v4err)
	}
	return nil
}

// blksizeCap is the largest block that fits the interface MTU without IP
// fragmentation: MTU minus IP, UDP and TFTP headers.
func blksizeCap(ifindex int, v6 bool) int {
	mtu := 1500
	if ifindex > 0 {
		if ifi, err := net.InterfaceByIndex(ifindex); err == nil && ifi.MTU > 0 {
			mtu = ifi.MTU
		}
	}
	overhead := 20 + 8 + 4
	if v6 {
		overhead = 40 + 8 + 4
	}
	return max(defaultBlksize, min(maxBlksize, mtu-overhead))
}
