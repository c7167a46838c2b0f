// A session's datagram path to its client, both kinds whole: a transfer's
// own UDP socket on a fresh port, or the listening socket in --single-port
// mode with the inbox the listener fills; the one signal that ends a
// transfer's waits; where a request arrived (IP_PKTINFO / IPV6_PKTINFO),
// how large a block fits its interface, and the client's MAC address on
// that link (the kernel's neighbour table, over netlink).
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// transferConn is a session's view of the network: a datagram path to one
// peer. recv returns only the peer's datagrams; what other addresses send is
// answered with ERROR 5 once answerStrays was called (see strayGuard). Once
// the transfer's end signal fires, recv returns why at once.
//
// A transfer's own socket (threadConn, socketConn) is connected to the peer,
// so the kernel routes its datagrams once, not once per send (a route lookup
// and two address copies were 7% of a lockstep transfer's CPU), and hands
// it only the peer's datagrams. Once strays are answered it also has
// SO_REUSEADDR, set after its bind: the socket that answers them shares its
// port, and the kernel gives a datagram to the connected one when it comes
// from the peer. The binds of other transfers, without the option, still
// find the port taken. An ICMP
// error for an earlier datagram comes back from the next system call on the
// socket, and that call did nothing: a send is made again, once. A recv
// that meets a port unreachable returns errClientGone, and one that meets a
// net or host unreachable waits on, as RFC 1122 (4.2.3.9) has TCP do: a
// route or a neighbour may come back, and the timers deal with the silence.
type transferConn interface {
	send(b []byte) error
	// sendBatch sends b as datagrams of segSize bytes, the last one
	// possibly shorter, in as few system calls as it can, and returns how
	// many it took.
	sendBatch(b []byte, segSize int) (int, error)
	// recv waits for the peer's next datagram until deadline. now is
	// the caller's latest reading of the clock, a moment old at most, from
	// which the wait counts: a reading is a system call on 32-bit MIPS.
	recv(b []byte, deadline, now time.Time) (int, error)
	// answerStrays has what comes to the transfer's port from an address
	// other than the peer's answered with ERROR 5, as RFC 1350 asks, once
	// the request became a transfer, until close.
	answerStrays()
	// maxInbound is how many of the client's datagrams the path holds
	// while the session is busy: a window the client sends must fit.
	maxInbound() int
	localAddr() netip.AddrPort
	close() error
}

// sendError ends a transfer: the client is told why, in the ERROR that
// toWireError decides, unless it ended or left the transfer itself. It
// returns err.
func sendError(c transferConn, err error) error {
	if toldToClient(err) {
		_ = c.send(appendError(nil, toWireError(err)))
	}
	return err
}

// transferEnd is a transfer's one stop signal: fired, once, when it must
// stop at once (superseded by a new request, or the server shutting down).
// Every wait of the session, on the network or on a download, returns then.
type transferEnd struct {
	done chan struct{}
	once sync.Once
	why  error
	// socket is the transfer's own socket, once open: firing wakes a read
	// blocked on it.
	socket atomic.Pointer[net.UDPConn]
	// thread is the transfer's own socket when its waits block a thread
	// (threadConn): firing wakes that thread.
	thread atomic.Pointer[threadConn]
}

func newTransferEnd() *transferEnd { return &transferEnd{done: make(chan struct{})} }

// fire ends the transfer; why is what its waits then return.
func (e *transferEnd) fire(why error) {
	e.once.Do(func() {
		e.why = why
		close(e.done)
		if sock := e.socket.Load(); sock != nil {
			_ = sock.SetReadDeadline(time.Unix(1, 0))
		}
		if sock := e.thread.Load(); sock != nil {
			sock.wake()
		}
	})
}

// reason is why the transfer was ended, or nil while it runs.
func (e *transferEnd) reason() error {
	select {
	case <-e.done:
		return e.why
	default:
		return nil
	}
}

// socketConn is a transfer's own UDP socket on a fresh port, connected to
// the peer (see transferConn).
type socketConn struct {
	conn   *net.UDPConn
	raw    syscall.RawConn
	end    *transferEnd
	batch  *batchSender
	strays strayGuard
	// armed is the socket's read deadline, which moves only when a wait
	// must end sooner: every ACK pushes the next deadline later, and
	// moving a socket's deadline costs the runtime's timer work each time.
	armed time.Time
}

// openAllSockets opens n sockets, the i-th by open(i): all of them, or, at
// the first failure, none.
func openAllSockets(n int, open func(i int) (*net.UDPConn, error)) ([]*net.UDPConn, error) {
	var conns []*net.UDPConn
	for i := range n {
		conn, err := open(i)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, err
		}
		conns = append(conns, conn)
	}
	return conns, nil
}

// portRange is --port-range: the ports a transfer's socket may take, any
// the kernel picks when zero.
type portRange struct{ lo, hi uint16 }

// errNoFreePort: every port of --port-range is taken.
var errNoFreePort = errors.New("no free port in --port-range")

// bindInRange calls bind with ports of the range, from a random one on,
// until one is free.
func bindInRange(ports portRange, bind func(port uint16) error) error {
	if ports.lo == 0 {
		return bind(0)
	}
	size := int(ports.hi) - int(ports.lo) + 1
	start := rand.IntN(size)
	for i := range size {
		err := bind(ports.lo + uint16((start+i)%size))
		if !errors.Is(err, syscall.EADDRINUSE) {
			return err
		}
	}
	return errNoFreePort
}

// openSocketConn makes the socket a transfer answers from: a fresh port
// (within ports) on the local address the request was sent to (dst),
// connected to the peer.
func openSocketConn(peer netip.AddrPort, dst destination, ports portRange, end *transferEnd, mode batchMode, log *slog.Logger) (*socketConn, error) {
	network, local := transferLocal(peer, dst)
	var conn *net.UDPConn
	err := bindInRange(ports, func(port uint16) (err error) {
		conn, err = net.DialUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, port)), net.UDPAddrFromAddrPort(peer))
		return err
	})
	if err != nil {
		return nil, err
	}
	end.socket.Store(conn)
	// SyscallConn fails only for a nil conn.
	raw, _ := conn.SyscallConn()
	return &socketConn{
		conn:   conn,
		raw:    raw,
		end:    end,
		batch:  newBatchSender(conn, peer, nil, newSocketBatchMode(mode), log),
		strays: newStrayGuard(raw, netip.AddrPortFrom(local, uint16(conn.LocalAddr().(*net.UDPAddr).Port)), log),
	}, nil
}

// setReuseAddr sets SO_REUSEADDR (see transferConn).
func setReuseAddr(raw syscall.RawConn) error {
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	}); err != nil {
		return err
	}
	return os.NewSyscallError("setsockopt", serr)
}

// strayGuard answers the strays at a transfer's connected port: a socket
// beside it, bound to the same address and port, takes what the peer does
// not send, and a goroutine answers each with ERROR 5. It opens once the
// transfer has taken strayAfter datagrams from its peer: the socket and its
// goroutine cost 43 µs of CPU, a third of a one-block transfer's 130 µs and
// about what the connected socket saves a lockstep transfer over 100
// blocks. A stray that comes sooner gets the kernel's ICMP port
// unreachable.
type strayGuard struct {
	socket syscall.RawConn // the transfer's
	local  netip.AddrPort
	// heard counts the peer's datagrams since answer; -1 before it.
	heard int
	conn  *net.UDPConn // the socket beside, once open
	log   *slog.Logger
}

const strayAfter = 200

func newStrayGuard(socket syscall.RawConn, local netip.AddrPort, log *slog.Logger) strayGuard {
	return strayGuard{socket: socket, local: local, heard: -1, log: log}
}

// answer starts the count to the guard's opening.
func (g *strayGuard) answer() { g.heard = 0 }

// peerHeard counts a datagram of the peer's, and opens the guard's socket
// after the strayAfter-th.
func (g *strayGuard) peerHeard() {
	if g.heard < 0 || g.heard >= strayAfter {
		return // not answering yet, or open (or failed to) already
	}
	g.heard++
	if g.heard < strayAfter {
		return
	}
	err := setReuseAddr(g.socket)
	if err == nil {
		g.conn, err = openStrays(g.local)
	}
	if err != nil {
		g.log.Debug("strays go unanswered", "err", err)
	}
}

func (g *strayGuard) close() {
	if g.conn != nil {
		g.conn.Close()
	}
}

// openStrays binds a socket beside a transfer's connected one, on its
// local address and port, and answers with ERROR 5 each datagram that
// comes to it: from anyone but the peer, which the connected socket takes.
func openStrays(local netip.AddrPort) (*net.UDPConn, error) {
	network := "udp6"
	if local.Addr().Is4() {
		network = "udp4"
	}
	config := net.ListenConfig{Control: func(_, _ string, raw syscall.RawConn) error { return setReuseAddr(raw) }}
	pc, err := config.ListenPacket(context.Background(), network, local.String())
	if err != nil {
		return nil, err
	}
	conn := pc.(*net.UDPConn)
	go func() {
		reply := appendError(nil, errUnknownTID)
		buf := make([]byte, 4) // what the stray sent is not read
		for {
			_, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil && !isRefused(err) {
				return // closed with the transfer
			}
			if err == nil {
				_, _ = conn.WriteToUDPAddrPort(reply, from)
			}
		}
	}()
	return conn, nil
}

// transferLocal is the network and local address of the socket a transfer
// with peer answers from, the request having come to dst: that address, or
// the unspecified one of the peer's family where dst is of the other
// family or a multicast group, with its zone where it is link-local.
func transferLocal(peer netip.AddrPort, dst destination) (string, netip.Addr) {
	local := dst.addr
	network := "udp6"
	if peer.Addr().Is4() {
		network = "udp4"
		if !local.Is4() {
			local = netip.IPv4Unspecified()
		}
	} else if !local.Is6() {
		local = netip.IPv6Unspecified()
	}
	if local.Is6() && (local.IsLinkLocalUnicast() || local.IsLinkLocalMulticast()) && dst.ifindex > 0 {
		local = local.WithZone(strconv.Itoa(dst.ifindex))
	}
	if local.IsMulticast() {
		local = netip.IPv6Unspecified()
		if peer.Addr().Is4() {
			local = netip.IPv4Unspecified()
		}
	}
	return network, local
}

// threadConn is a transfer's own UDP socket kept out of Go's network
// poller: a wait blocks the goroutine's thread, locked to it, in recvfrom,
// so an ACK costs that thread one wake-up and one system call, where the
// poller adds a park, an epoll wake-up and the scheduler's hand-over
// between threads for every datagram (and ppoll, then recvfrom, took a
// sixth more CPU per block than recvfrom alone).
//
// The wait ends at its deadline by a signal, not by the socket's receive
// timeout: SO_RCVTIMEO counts in the kernel's ticks (a timeout of 1 µs
// returned after 8 to 12 ms on Debian's HZ=250 kernel), and a lost
// block's resend must leave on time to the microsecond. A POSIX timer
// sends the thread SIGURG at the deadline (the signal Go's runtime itself
// preempts with, and ignores otherwise), and with a receive timeout set on
// the socket a signal ends a blocked recvfrom with EINTR, although Go's
// handlers ask for SA_RESTART (signal(7)). The first waits (alarmAfter),
// and every wait where no such timer can be made (a seccomp filter), block
// in ppoll, whose timeout is as fine, and then read without blocking.
type threadConn struct {
	fd      int
	peer    netip.AddrPort
	local   netip.AddrPort
	end     *transferEnd
	batch   *batchSender
	alarm   *threadAlarm // nil where the wait is ppoll's
	waits   int          // recv's calls, up to alarmAfter
	yielded time.Time    // see yieldEvery
	strays  strayGuard
	// The wait's arguments, kept here so that the per-ACK system calls
	// take pointers to nothing they allocate.
	poll    [1]unix.PollFd
	timeout unix.Timespec
	// mu keeps wake from shutting down a descriptor number that close
	// gave back and another socket took.
	mu     sync.Mutex
	closed bool
}

// yieldEvery is how often a transfer on a thread of its own yields its P.
// Its goroutine blocks in system calls, never in the scheduler, so Go's
// monitor thread (sysmon) takes it for one that runs on, preempts it every
// 10 ms with a signal, and after each preemption polls every 20 µs again:
// a 50 MB lockstep transfer cost 4,100 sleeps of the monitor, and 150 with
// a yield every 5 ms, which took 13% off the server's CPU.
const yieldEvery = 5 * time.Millisecond

// openThreadConn binds a blocking socket for peer at a port of ports, on
// the local address a request to dst is answered from, and connects it to
// the peer (see transferConn).
func openThreadConn(peer netip.AddrPort, dst destination, ports portRange, end *transferEnd, mode batchMode, log *slog.Logger) (*threadConn, error) {
	_, local := transferLocal(peer, dst)
	family := unix.AF_INET6
	if peer.Addr().Is4() {
		family = unix.AF_INET
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	c := &threadConn{fd: fd, peer: peer, end: end}
	if err := c.bind(local, ports); err != nil {
		unix.Close(fd)
		return nil, err
	}
	c.strays = newStrayGuard(c, c.local, log)
	peerSA, err := sockaddrOf(peer)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.Connect(fd, peerSA); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("connect", err)
	}
	c.poll[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	c.batch = newRawBatchSender(c, c.sendmsg, peer, nil, newSocketBatchMode(mode), log)
	c.batch.connected = true
	end.thread.Store(c)
	if end.reason() != nil {
		c.wake() // fired before the store: its wake found nothing to wake
	}
	return c, nil
}

// bind binds the socket to local at a port of ports, as openSocketConn does,
// and notes the address it got.
func (c *threadConn) bind(local netip.Addr, ports portRange) error {
	if !c.peer.Addr().Is4() {
		// The peer is IPv6: the socket needs no mapped IPv4 addresses.
		if err := unix.SetsockoptInt(c.fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return os.NewSyscallError("setsockopt", err)
		}
	}
	err := bindInRange(ports, func(port uint16) error {
		sa, err := sockaddrOf(netip.AddrPortFrom(local, port))
		if err != nil {
			return err
		}
		return os.NewSyscallError("bind", unix.Bind(c.fd, sa))
	})
	if err != nil {
		return err
	}
	c.local, err = boundAddr(c.fd)
	return err
}

// boundAddr is the address socket fd is bound to. It reads the sockaddr
// itself: unix.Getsockname asks every IPv4 socket's protocol too (an L2TP
// socket's address differs), one more system call per transfer.
func boundAddr(fd int) (netip.AddrPort, error) {
	var rsa unix.RawSockaddrAny
	size := uint32(unsafe.Sizeof(rsa))
	if _, _, errno := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&size))); errno != 0 {
		return netip.AddrPort{}, os.NewSyscallError("getsockname", errno)
	}
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&rsa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), networkPort(sa.Port)), nil
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(&rsa))
		addr := netip.AddrFrom16(sa.Addr)
		if sa.Scope_id != 0 {
			addr = addr.WithZone(strconv.Itoa(int(sa.Scope_id)))
		}
		return netip.AddrPortFrom(addr, networkPort(sa.Port)), nil
	}
	return netip.AddrPort{}, fmt.Errorf("getsockname: address family %d", rsa.Addr.Family)
}

// networkPort is a sockaddr's port, which the kernel keeps in network byte
// order.
func networkPort(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// sockaddrOf is a as the kernel takes it; a zone is an interface's index
// or name.
func sockaddrOf(a netip.AddrPort) (unix.Sockaddr, error) {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(a.Port()), Addr: a.Addr().As4()}, nil
	}
	index, err := zoneIndex(a.Addr().Zone())
	if err != nil {
		return nil, err
	}
	return &unix.SockaddrInet6{Port: int(a.Port()), Addr: a.Addr().As16(), ZoneId: index}, nil
}

func (c *threadConn) send(b []byte) error {
	_, err := unix.Write(c.fd, b)
	if isRefused(err) || isUnreachable(err) {
		_, err = unix.Write(c.fd, b) // see transferConn
	}
	return os.NewSyscallError("write", err)
}

// sendmsg sends one datagram, or a GSO batch with its control message:
// a block alone goes by write, which spares the kernel sendmsg's header
// and vector copies.
func (c *threadConn) sendmsg(b, oob []byte) error {
	if len(oob) == 0 {
		return c.send(b)
	}
	_, err := unix.SendmsgN(c.fd, b, oob, nil, 0)
	return os.NewSyscallError("sendmsg", err)
}

func (c *threadConn) sendBatch(b []byte, segSize int) (int, error) { return c.batch.send(b, segSize) }

// recv waits for the peer's next datagram until deadline, or until the
// transfer is ended: wake shuts the socket down for reading, which ends the
// wait at once.
func (c *threadConn) recv(b []byte, deadline, now time.Time) (int, error) {
	if c.waits < alarmAfter {
		c.waits++
		if c.waits == alarmAfter {
			c.alarm = newThreadAlarm(c.fd)
		}
	}
	for ; ; now = time.Now() {
		if err := c.end.reason(); err != nil {
			return 0, err
		}
		wait := deadline.Sub(now)
		if wait <= 0 {
			return 0, os.ErrDeadlineExceeded
		}
		if now.Sub(c.yielded) >= yieldEvery {
			if !c.yielded.IsZero() {
				runtime.Gosched() // not in the first wait: a short transfer needs none
			}
			c.yielded = now
		}
		var flags uintptr
		if c.alarm != nil {
			if err := c.alarm.arm(deadline, now); err != nil {
				return 0, err
			}
		} else {
			c.timeout = unix.NsecToTimespec(int64(wait))
			ready, err := unix.Ppoll(c.poll[:], &c.timeout, nil)
			if err == unix.EINTR || ready == 0 {
				continue // the loop ends a wait that has run its time
			}
			if err != nil {
				return 0, os.NewSyscallError("ppoll", err)
			}
			flags = unix.MSG_DONTWAIT
		}
		n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, uintptr(c.fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), flags, 0, 0)
		switch {
		case errno == unix.EINTR || errno == unix.EAGAIN || errno == unix.EHOSTUNREACH || errno == unix.ENETUNREACH:
			// The alarm (or another signal), the receive timeout, nothing
			// after all, or a soft ICMP error (isUnreachable's, compared
			// as numbers: every block's recvfrom passes here): the loop
			// ends a wait that has run its time.
			continue
		case errno == unix.ECONNREFUSED:
			queued, ok := queuedAfterRefusal(uintptr(c.fd), b)
			if !ok {
				return 0, errClientGone
			}
			n = uintptr(queued)
		case errno != 0:
			return 0, os.NewSyscallError("recvfrom", errno)
		}
		if err := c.end.reason(); err != nil {
			return 0, err // the shutdown's empty read, or a datagram that came too late
		}
		c.strays.peerHeard()
		return int(n), nil // the peer's: the socket is connected to it
	}
}

// queuedAfterRefusal reads, without waiting, what a recv that met an ICMP
// port unreachable has left: Linux reports a pending ICMP error before the
// datagrams queued (udp.c, __skb_recv_udp), so the final ACK of a client
// that exited can wait behind the error that a copy sent after it drew.
// It reports false when nothing is queued: the client is gone. Each copy's
// error replaces the one pending, so a few reads see past them all.
func queuedAfterRefusal(fd uintptr, b []byte) (int, bool) {
	for range 4 {
		n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			return int(n), true
		case unix.ECONNREFUSED, unix.EINTR:
			continue
		}
		return 0, false
	}
	return 0, false
}

// wake ends a wait in recv: a socket shut down for reading is readable,
// and its reads return nothing, at once and from then on.
func (c *threadConn) wake() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		_ = unix.Shutdown(c.fd, unix.SHUT_RD)
	}
}

func (c *threadConn) answerStrays() { c.strays.answer() }

func (c *threadConn) maxInbound() int { return maxWindowsize }

func (c *threadConn) localAddr() netip.AddrPort { return c.local }

// close closes the socket and gives the thread back; the session's
// goroutine calls it, as it made the waits.
func (c *threadConn) close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.alarm != nil {
		c.alarm.close()
	}
	c.strays.close()
	return unix.Close(c.fd)
}

// threadAlarm is a POSIX timer that sends the calling thread SIGURG when
// armed: the end of a wait in a recvfrom blocked on that thread.
type threadAlarm struct {
	id int32
	// at is when the armed timer first fires. A wait until a later
	// deadline keeps it and re-arms only once it has fired: an ACK, which
	// pushes the next deadline later, then costs no system call.
	at   time.Time
	spec unix.ItimerSpec
}

// alarmRepeat is how often the alarm fires again after its first time, until
// it is armed anew. Arming and then blocking in recvfrom are two steps, and
// a signal that comes between them (the thread preempted there, or a wait of
// a few microseconds) is handled before the recvfrom blocks; the next one
// ends that wait. Without the repeat only alarmBackstop ended it, 21-24 ms
// late: that was one lockstep loss in seventy through the 5% loss relay,
// quiet. A thread that waits elsewhere once the alarm fired (a proxied
// file's next bytes) takes a signal per repeat until its next wait arms the
// alarm again.
const alarmRepeat = time.Millisecond

// alarmBackstop is the socket's receive timeout, which makes a signal end
// a blocked recvfrom (see threadConn); the alarm's repeats end every wait
// long before it.
var alarmBackstop = unix.Timeval{Usec: 20000}

// sigevent is the kernel's struct sigevent (64 bytes), for a signal to
// one thread.
type sigevent struct {
	value  uintptr
	signo  int32
	notify int32
	tid    int32
	_      [64 - 12 - unsafe.Sizeof(uintptr(0))]byte
}

// sigevThreadID asks the kernel to signal the thread sigevent.tid.
const sigevThreadID = 4

// alarmAfter is how many waits a transfer makes in ppoll before its thread
// gets an alarm: making one takes five system calls, which ppoll's one
// extra call per wait costs over five waits, and the many transfers of a
// few blocks (a boot menu, a configuration) end sooner.
const alarmAfter = 16

// newThreadAlarm makes the calling goroutine's alarm for waits on socket
// fd and locks it to its thread, which the alarm signals, until close; or
// returns nil where the kernel refuses one.
func newThreadAlarm(fd int) *threadAlarm {
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &alarmBackstop); err != nil {
		return nil
	}
	runtime.LockOSThread()
	ev := sigevent{signo: int32(unix.SIGURG), notify: sigevThreadID, tid: int32(unix.Gettid())}
	a := &threadAlarm{spec: unix.ItimerSpec{Interval: unix.NsecToTimespec(int64(alarmRepeat))}}
	_, _, errno := unix.Syscall(unix.SYS_TIMER_CREATE, unix.CLOCK_MONOTONIC, uintptr(unsafe.Pointer(&ev)), uintptr(unsafe.Pointer(&a.id)))
	if errno != 0 {
		runtime.UnlockOSThread()
		return nil
	}
	return a
}

// arm makes the alarm fire at deadline at the latest, now being the time.
// A reading of the clock that a preemption made stale may keep an alarm
// that has fired already; its repeat then ends the wait.
func (a *threadAlarm) arm(deadline, now time.Time) error {
	if a.at.After(now) && !a.at.After(deadline) {
		return nil // it fires sooner, and the wait then goes on
	}
	a.spec.Value = unix.NsecToTimespec(int64(deadline.Sub(now)))
	_, _, errno := unix.Syscall6(unix.SYS_TIMER_SETTIME, uintptr(a.id), 0, uintptr(unsafe.Pointer(&a.spec)), 0, 0, 0)
	if errno != 0 {
		return os.NewSyscallError("timer_settime", errno)
	}
	a.at = deadline
	return nil
}

func (a *threadAlarm) close() {
	unix.Syscall(unix.SYS_TIMER_DELETE, uintptr(a.id), 0, 0)
	runtime.UnlockOSThread()
}

// Control, Read and Write make the socket a syscall.RawConn for the batch
// sender: the descriptor blocks, so f runs once and is done.
func (c *threadConn) Control(f func(fd uintptr)) error {
	f(uintptr(c.fd))
	return nil
}

func (c *threadConn) Read(f func(fd uintptr) bool) error { return c.Write(f) }

func (c *threadConn) Write(f func(fd uintptr) bool) error {
	if !f(uintptr(c.fd)) {
		return unix.EAGAIN
	}
	return nil
}

func (c *socketConn) send(b []byte) error {
	_, err := c.conn.Write(b)
	if isRefused(err) || isUnreachable(err) {
		_, err = c.conn.Write(b) // see transferConn
	}
	return err
}

func (c *socketConn) sendBatch(b []byte, segSize int) (int, error) { return c.batch.send(b, segSize) }

// recv waits for the peer's next datagram until deadline, or until the
// transfer is ended: ending it moves the socket's deadline into the past,
// which wakes a read that is blocked.
func (c *socketConn) recv(b []byte, deadline, _ time.Time) (int, error) {
	if c.armed.IsZero() || deadline.Before(c.armed) {
		if err := c.arm(deadline); err != nil {
			return 0, err
		}
	}
	for {
		if err := c.end.reason(); err != nil {
			return 0, err
		}
		n, err := c.conn.Read(b)
		if err != nil {
			if isRefused(err) {
				ok := false
				_ = c.raw.Control(func(fd uintptr) { n, ok = queuedAfterRefusal(fd, b) })
				if !ok {
					return 0, errClientGone
				}
				c.strays.peerHeard()
				return n, nil
			}
			if isUnreachable(err) {
				continue
			}
			if why := c.end.reason(); why != nil {
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
		c.strays.peerHeard()
		return n, nil // the peer's: the socket is connected to it
	}
}

func (c *socketConn) arm(deadline time.Time) error {
	c.armed = deadline
	return c.conn.SetReadDeadline(deadline)
}

// maxInbound: the socket's own buffer holds a window; --max-window-bytes
// keeps windows within it.
func (c *socketConn) maxInbound() int { return maxWindowsize }

func (c *socketConn) localAddr() netip.AddrPort {
	return c.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

func (c *socketConn) answerStrays() { c.strays.answer() }

func (c *socketConn) close() error {
	c.strays.close()
	return c.conn.Close()
}

// sharedInboxSize is how many of a client's datagrams a single-port transfer
// may have waiting; more are dropped, as a full socket buffer would.
const sharedInboxSize = 8

// inbox is where the listener puts a single-port transfer's datagrams.
type inbox struct {
	queue chan []byte
	free  chan []byte
}

// newInbox makes an inbox for datagrams of at most maxPacket bytes.
func newInbox(maxPacket int) *inbox {
	in := &inbox{queue: make(chan []byte, sharedInboxSize), free: make(chan []byte, sharedInboxSize)}
	for range sharedInboxSize {
		in.free <- make([]byte, maxPacket)
	}
	return in
}

// deliver hands a datagram to the transfer without blocking the listener.
func (in *inbox) deliver(pkt []byte) {
	select {
	case buf := <-in.free:
		buf = buf[:copy(buf, pkt)]
		select {
		case in.queue <- buf:
		default:
			in.free <- buf
		}
	default:
	}
}

// sharedConn is a transfer in --single-port mode: it answers from the
// listening socket, from the address the request was sent to, and takes
// the client's datagrams from its inbox.
type sharedConn struct {
	listener *net.UDPConn
	peer     netip.AddrPort
	local    netip.Addr // the address the request was sent to
	oob      []byte     // IP_PKTINFO / IPV6_PKTINFO making it the source address
	inbox    *inbox
	end      *transferEnd
	timer    *time.Timer
	batch    *batchSender
}

func newSharedConn(listener *net.UDPConn, peer netip.AddrPort, dst destination, in *inbox, end *transferEnd, mode *socketBatchMode, log *slog.Logger) *sharedConn {
	oob := pktinfoFor(dst)
	return &sharedConn{listener: listener, peer: peer, local: dst.addr, oob: oob, inbox: in, end: end,
		timer: time.NewTimer(time.Hour), batch: newBatchSender(listener, peer, oob, mode, log)}
}

func (c *sharedConn) send(b []byte) error {
	_, _, err := c.listener.WriteMsgUDPAddrPort(b, c.oob, c.peer)
	return err
}

func (c *sharedConn) sendBatch(b []byte, segSize int) (int, error) { return c.batch.send(b, segSize) }

// answerStrays has nothing to start: the listener, whose port this is,
// answers with ERROR 5 what is neither a request nor a transfer's.
func (c *sharedConn) answerStrays() {}

func (c *sharedConn) recv(b []byte, deadline, now time.Time) (int, error) {
	if err := c.end.reason(); err != nil {
		return 0, err // before the inbox: a flood must not hide the end
	}
	c.timer.Reset(deadline.Sub(now))
	defer c.timer.Stop()
	select {
	case pkt := <-c.inbox.queue:
		n := copy(b, pkt)
		c.inbox.free <- pkt[:cap(pkt)]
		return n, nil
	case <-c.timer.C:
		return 0, os.ErrDeadlineExceeded
	case <-c.end.done:
		return 0, c.end.why
	}
}

func (c *sharedConn) maxInbound() int { return sharedInboxSize }

func (c *sharedConn) localAddr() netip.AddrPort {
	listener := c.listener.LocalAddr().(*net.UDPAddr).AddrPort()
	if !c.local.IsValid() {
		return listener
	}
	return netip.AddrPortFrom(c.local, listener.Port())
}

func (c *sharedConn) close() error { return nil }

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

// replyFrom answers a datagram that came to the listening socket with an
// ERROR, from the address the datagram was sent to.
func replyFrom(listener *net.UDPConn, to netip.AddrPort, dst destination, we *wireError) error {
	_, _, err := listener.WriteMsgUDPAddrPort(appendError(nil, we), pktinfoFor(dst), to)
	return err
}

// pktinfoFor builds the control message that makes a datagram sent from the
// listening socket leave from the address a request was sent to.
func pktinfoFor(dst destination) []byte {
	switch {
	case dst.addr.Is4():
		return unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: dst.addr.As4()})
	case dst.addr.Is6() && !dst.addr.IsMulticast():
		return unix.PktInfo6(&unix.Inet6Pktinfo{Addr: dst.addr.As16(), Ifindex: uint32(dst.ifindex)})
	}
	return nil
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
		if m, err := interfaceMTUs.get(ifindex, time.Now()); err == nil && m > 0 {
			mtu = m
		}
	}
	overhead := 20 + 8 + 4
	if v6 {
		overhead = 40 + 8 + 4
	}
	return max(defaultBlksize, min(maxBlksize, mtu-overhead))
}

// mtuCache keeps the MTUs interfaceMTU found, each for mtuCacheFor: its
// four system calls were a twentieth of the server's CPU for a one-block
// transfer, and a boot room asks for the same interface hundreds of times
// a second. An MTU changed by the operator is seen within mtuCacheFor.
type mtuCache struct {
	lookup  func(ifindex int) (int, error)
	mu      sync.Mutex
	byIndex map[int]cachedMTU
}

type cachedMTU struct {
	mtu   int
	asked time.Time
}

const mtuCacheFor = time.Second

var interfaceMTUs = &mtuCache{lookup: interfaceMTU}

// get is interface ifindex's MTU, asked anew when the one kept is older
// than mtuCacheFor at now; a failed lookup is not kept.
func (c *mtuCache) get(ifindex int, now time.Time) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if m, ok := c.byIndex[ifindex]; ok && now.Sub(m.asked) < mtuCacheFor && !now.Before(m.asked) {
		return m.mtu, nil
	}
	mtu, err := c.lookup(ifindex)
	if err != nil {
		delete(c.byIndex, ifindex)
		return 0, err
	}
	if c.byIndex == nil {
		c.byIndex = make(map[int]cachedMTU)
	}
	c.byIndex[ifindex] = cachedMTU{mtu: mtu, asked: now}
	return mtu, nil
}

// interfaceMTU is the MTU of interface ifindex, asked with two ioctls
// (index to name, name to MTU) on a socket of its own: net.InterfaceByIndex
// dumps every link over netlink, which cost a fifth of the CPU of a
// one-block transfer.
func interfaceMTU(ifindex int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	req := ifreq{value: int32(ifindex)}
	for _, op := range []struct {
		code uintptr
		name string
	}{{unix.SIOCGIFNAME, "SIOCGIFNAME"}, {unix.SIOCGIFMTU, "SIOCGIFMTU"}} {
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), op.code, uintptr(unsafe.Pointer(&req))); errno != 0 {
			return 0, fmt.Errorf("%s of interface %d: %w", op.name, ifindex, errno)
		}
	}
	return int(req.value), nil
}

// ifreq is the kernel's struct ifreq as SIOCGIFNAME and SIOCGIFMTU use it:
// a name, then an int (ifr_ifindex, ifr_mtu) at the start of a union 24
// bytes long on 64-bit targets. Not unix.Ifreq: it keeps the union as bytes,
// which a copy on the stack may leave unaligned, and on MIPS its Uint32
// then faults (SIGBUS).
type ifreq struct {
	name  [unix.IFNAMSIZ]byte
	value int32
	_     [20]byte
}

// clientMAC is the link-layer address the kernel's neighbour table holds
// for addr on interface ifindex (any interface when 0): the client's MAC
// address when it is on a directly attached link, "" when it is not (behind
// a router the table holds the router, not the client), on loopback, or
// not resolved. It reads the table of addr's family over netlink
// (RTM_GETNEIGH, a dump: every kernel answers one), once per transfer,
// after the transfer ran. The dump is syscall's NetlinkRIB, which package
// net links anyway for the interface table: a request and read loop of our
// own on x/sys/unix cost 45 KB more on mipsle.
func clientMAC(addr netip.Addr, ifindex int) (string, error) {
	addr = addr.Unmap().WithZone("")
	if !addr.IsValid() || addr.IsLoopback() || addr.IsUnspecified() || addr.IsMulticast() {
		return "", nil
	}
	family := unix.AF_INET6
	if addr.Is4() {
		family = unix.AF_INET
	}
	table, err := syscall.NetlinkRIB(unix.RTM_GETNEIGH, family)
	if err != nil {
		return "", fmt.Errorf("netlink neighbour dump: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(table)
	if err != nil {
		return "", fmt.Errorf("netlink neighbour dump: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Type == unix.RTM_NEWNEIGH {
			if mac := neighbourEntryMAC(m.Data, addr, ifindex); mac != "" {
				return mac, nil
			}
		}
	}
	return "", nil
}

// neighbourEntryMAC is the MAC address of one neighbour entry (an ndmsg and
// its attributes) when it is want's on ifindex and resolved, or "". Only a
// 6-byte address is a MAC: a tunnel's link-layer address is an IP address.
func neighbourEntryMAC(entry []byte, want netip.Addr, ifindex int) string {
	if len(entry) < unix.SizeofNdMsg {
		return ""
	}
	entryIf := int(int32(binary.NativeEndian.Uint32(entry[4:8])))
	state := binary.NativeEndian.Uint16(entry[8:10])
	if (ifindex != 0 && entryIf != ifindex) || state&(unix.NUD_INCOMPLETE|unix.NUD_FAILED) != 0 || state == unix.NUD_NONE {
		return ""
	}
	var dst netip.Addr
	var lladdr []byte
	for attrs := entry[unix.SizeofNdMsg:]; len(attrs) >= 4; {
		size := int(binary.NativeEndian.Uint16(attrs[0:2]))
		if size < 4 || size > len(attrs) {
			return ""
		}
		value := attrs[4:size]
		switch binary.NativeEndian.Uint16(attrs[2:4]) {
		case unix.NDA_DST:
			dst, _ = netip.AddrFromSlice(value)
		case unix.NDA_LLADDR:
			lladdr = value
		}
		attrs = attrs[min((size+3)&^3, len(attrs)):]
	}
	if dst.Unmap() != want || len(lladdr) != 6 || !slices.ContainsFunc(lladdr, func(c byte) bool { return c != 0 }) {
		return ""
	}
	return net.HardwareAddr(lladdr).String()
}
