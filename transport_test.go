package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestThreadConnWaits drives a transfer's own blocking socket as the sender
// does, against real sockets on loopback: a wait ends at its deadline and
// never before it, also when an earlier, sooner alarm is still set; the
// peer's datagram comes through whole; a stranger gets ERROR 5 from the
// socket beside it and does not end the wait; and the transfer's end wakes a
// blocked wait.
func TestThreadConnWaits(t *testing.T) {
	peer := listenLoopback(t)
	stranger := listenLoopback(t)
	end := newTransferEnd()
	// With a backstop far beyond the waits, a wait that ends on time was
	// ended by the alarm.
	backstop := alarmBackstop
	alarmBackstop = unix.Timeval{Sec: 10}
	defer func() { alarmBackstop = backstop }()
	// The socket belongs to this goroutine's thread until close, as a
	// session's does.
	c, err := openThreadConn(peer.LocalAddr().(*net.UDPAddr).AddrPort(), destination{addr: netip.MustParseAddr("127.0.0.1")}, portRange{}, end, batchSingle, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	local := net.UDPAddrFromAddrPort(c.localAddr())
	buf := make([]byte, 64)

	// Short waits in a row, first in ppoll, then on the alarm: each arms
	// it anew or keeps one that fires sooner, and must not return before
	// its own deadline.
	waits := []time.Duration{3 * time.Millisecond, 1 * time.Millisecond, 5 * time.Millisecond, 2 * time.Millisecond}
	for i := range alarmAfter + 8 {
		wait := waits[i%len(waits)]
		now := time.Now()
		deadline := now.Add(wait)
		if _, err := c.recv(buf, deadline, now); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("wait of %v: %v, want the deadline", wait, err)
		}
		switch took := time.Since(now); {
		case took < wait:
			t.Fatalf("wait of %v ended after %v, before its deadline", wait, took)
		case took >= 10*time.Second:
			t.Fatalf("wait of %v ended after %v: by the socket's backstop, not the alarm", wait, took)
		}
	}
	if c.alarm == nil {
		t.Fatal("no alarm: timer_create was refused, and the waits poll")
	}

	// A datagram that ends a wait leaves its alarm set for the sooner
	// deadline; the next, longer wait outlasts that alarm.
	if _, err := peer.WriteToUDP([]byte("ack 1"), local); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if n, err := c.recv(buf, now.Add(time.Second), now); err != nil || !bytes.Equal(buf[:n], []byte("ack 1")) {
		t.Fatalf("got %q, %v; want the peer's datagram", buf[:n], err)
	}
	now = time.Now()
	if _, err := c.recv(buf, now.Add(2*time.Millisecond), now); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal(err)
	}
	now = time.Now()
	if _, err := c.recv(buf, now.Add(20*time.Millisecond), now); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal(err)
	}
	if took := time.Since(now); took < 20*time.Millisecond || took >= 10*time.Second {
		t.Fatalf("a wait of 20 ms after a sooner alarm took %v", took)
	}

	// Once strays are answered and the peer has sent strayAfter
	// datagrams, a stranger is told it has the wrong TID; the peer's
	// datagram that follows ends the wait.
	c.answerStrays()
	for i := range strayAfter {
		ack := []byte{0, opACK, byte(i >> 8), byte(i)}
		if _, err := peer.WriteToUDP(ack, local); err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		if n, err := c.recv(buf, now.Add(5*time.Second), now); err != nil || !bytes.Equal(buf[:n], ack) {
			t.Fatalf("datagram %d: got %q, %v; want %q", i, buf[:n], err, ack)
		}
	}
	if _, err := stranger.WriteToUDP([]byte{0, opACK, 0, 1}, local); err != nil {
		t.Fatal(err)
	}
	if _, err := peer.WriteToUDP([]byte("ack 2"), local); err != nil {
		t.Fatal(err)
	}
	now = time.Now()
	if n, err := c.recv(buf, now.Add(5*time.Second), now); err != nil || !bytes.Equal(buf[:n], []byte("ack 2")) {
		t.Fatalf("got %q, %v; want the peer's second datagram", buf[:n], err)
	}
	_ = stranger.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := stranger.ReadFromUDP(buf)
	if err != nil || errorFromPacket(buf[:n]) == nil || errorFromPacket(buf[:n]).code != codeUnknownTID {
		t.Fatalf("stranger got %q, %v; want ERROR 5", buf[:n], err)
	}

	// The end, fired from elsewhere once the wait blocks in recvfrom,
	// ends it with its reason.
	tid := unix.Gettid()
	go func() {
		defer end.fire(errShutdown)
		inRecvfrom := fmt.Sprintf("%d ", unix.SYS_RECVFROM)
		for range 5000 {
			state, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/syscall", tid))
			if err != nil || strings.HasPrefix(string(state), inRecvfrom) {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	now = time.Now()
	if _, err := c.recv(buf, now.Add(30*time.Second), now); !errors.Is(err, errShutdown) {
		t.Fatalf("ended wait: %v, want the end's reason", err)
	}
}

// TestThreadAlarmRepeats: a wait whose alarm signal came before its
// recvfrom began (the thread preempted between arming and the call) is
// ended by the alarm's repeat, not by the socket's backstop. The alarm is
// left in that state by hand: armed, fired while the thread spun, and kept
// as though it were still to come.
func TestThreadAlarmRepeats(t *testing.T) {
	peer := listenLoopback(t)
	backstop := alarmBackstop
	alarmBackstop = unix.Timeval{Sec: 10}
	defer func() { alarmBackstop = backstop }()
	c, err := openThreadConn(peer.LocalAddr().(*net.UDPAddr).AddrPort(), destination{addr: netip.MustParseAddr("127.0.0.1")}, portRange{}, newTransferEnd(), batchSingle, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	buf := make([]byte, 64)
	for range alarmAfter {
		now := time.Now()
		if _, err := c.recv(buf, now.Add(100*time.Microsecond), now); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal(err)
		}
	}
	if c.alarm == nil {
		t.Fatal("no alarm: timer_create was refused, and the waits poll")
	}
	if err := c.alarm.arm(time.Now().Add(time.Millisecond), time.Now()); err != nil {
		t.Fatal(err)
	}
	for spin := time.Now(); time.Since(spin) < 3*time.Millisecond; {
		// The signal comes to this thread, outside any recvfrom.
	}
	now := time.Now()
	deadline := now.Add(5 * time.Millisecond)
	c.alarm.at = deadline
	if _, err := c.recv(buf, deadline, now); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("wait: %v, want the deadline", err)
	}
	if took := time.Since(now); took < 5*time.Millisecond || took >= 5*time.Second {
		t.Fatalf("a wait of 5 ms whose signal came early took %v; the backstop is 10 s", took)
	}
}

// TestRefusalLeavesQueuedDatagramsFirst: a client that sent its final ACK
// and exited is sent a copy that crossed the ACK, and the ICMP port
// unreachable it draws is reported before the ACK queued at the socket.
// recv returns the ACK first, on both kinds of transfer socket, and the
// closed port once nothing is queued.
func TestRefusalLeavesQueuedDatagramsFirst(t *testing.T) {
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	here := destination{addr: netip.MustParseAddr("127.0.0.1")}
	open := map[string]func(peer netip.AddrPort) (transferConn, func(func(fd uintptr)) error, error){
		"own thread": func(peer netip.AddrPort) (transferConn, func(func(fd uintptr)) error, error) {
			c, err := openThreadConn(peer, here, portRange{}, newTransferEnd(), batchSingle, discard)
			if err != nil {
				return nil, nil, err
			}
			return c, c.Control, nil
		},
		"poller": func(peer netip.AddrPort) (transferConn, func(func(fd uintptr)) error, error) {
			c, err := openSocketConn(peer, here, portRange{}, newTransferEnd(), batchSingle, discard)
			if err != nil {
				return nil, nil, err
			}
			return c, c.raw.Control, nil
		},
	}
	for name, open := range open {
		t.Run(name, func(t *testing.T) {
			peer := listenLoopback(t)
			c, control, err := open(peer.LocalAddr().(*net.UDPAddr).AddrPort())
			if err != nil {
				t.Fatal(err)
			}
			defer c.close()
			if _, err := peer.WriteToUDP([]byte("final ack"), net.UDPAddrFromAddrPort(c.localAddr())); err != nil {
				t.Fatal(err)
			}
			peer.Close()
			// refuse sends a copy to the closed port and waits until its
			// ICMP error is pending at the socket (POLLERR).
			refuse := func() {
				t.Helper()
				if err := c.send([]byte("copy")); err != nil {
					t.Fatal(err)
				}
				for range 50 {
					var revents int16
					control(func(fd uintptr) {
						fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
						if _, err := unix.Poll(fds, 100); err == nil {
							revents = fds[0].Revents
						}
					})
					if revents&unix.POLLERR != 0 {
						return
					}
				}
				t.Fatal("no ICMP error at the socket within 5 s")
			}
			refuse()
			buf := make([]byte, 64)
			now := time.Now()
			if n, err := c.recv(buf, now.Add(time.Second), now); err != nil || string(buf[:n]) != "final ack" {
				t.Fatalf("got %q, %v; want the ACK queued behind the error", buf[:n], err)
			}
			refuse()
			now = time.Now()
			if n, err := c.recv(buf, now.Add(time.Second), now); !errors.Is(err, errClientGone) {
				t.Fatalf("got %q, %v; want %v", buf[:n], err, errClientGone)
			}
		})
	}
}

func listenLoopback(t *testing.T) *net.UDPConn {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestMTUCacheAsksOncePerSecond: an interface's MTU is asked once and kept
// for mtuCacheFor, each interface on its own; after that (or when the clock
// went back) it is asked anew and the new value served; a failed lookup is
// not kept.
func TestMTUCacheAsksOncePerSecond(t *testing.T) {
	asked := map[int]int{}
	mtu := map[int]int{1: 65536, 2: 1500}
	fail := false
	c := &mtuCache{lookup: func(ifindex int) (int, error) {
		asked[ifindex]++
		if fail {
			return 0, errors.New("no such device")
		}
		return mtu[ifindex], nil
	}}
	t0 := time.Unix(1_000_000, 0)
	expect := func(ifindex int, at time.Duration, want, lookups int) {
		t.Helper()
		got, err := c.get(ifindex, t0.Add(at))
		if err != nil || got != want || asked[ifindex] != lookups {
			t.Fatalf("interface %d at %v: MTU %d, %v after %d lookups; want %d after %d", ifindex, at, got, err, asked[ifindex], want, lookups)
		}
	}
	expect(1, 0, 65536, 1)
	expect(1, 999*time.Millisecond, 65536, 1)
	expect(2, 500*time.Millisecond, 1500, 1)
	mtu[1] = 9000 // the operator changes it
	expect(1, 999*time.Millisecond, 65536, 1)
	expect(1, time.Second, 9000, 2)
	expect(1, 500*time.Millisecond, 9000, 3) // the clock went back
	fail = true
	for i := range 2 {
		if _, err := c.get(2, t0.Add(3*time.Second)); err == nil || asked[2] != 2+i {
			t.Fatalf("failed lookup %d: err %v after %d lookups", i+1, err, asked[2])
		}
	}
}

// TestBoundAddrReadsTheSockaddr: boundAddr reads the address and port a
// socket was bound to, IPv4 and IPv6, as the kernel reports them.
func TestBoundAddrReadsTheSockaddr(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		local := netip.MustParseAddr(host)
		family := unix.AF_INET6
		if local.Is4() {
			family = unix.AF_INET
		}
		fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		sa, _ := sockaddrOf(netip.AddrPortFrom(local, 0))
		if err := unix.Bind(fd, sa); err != nil {
			t.Skipf("%s: %v", host, err)
		}
		got, err := boundAddr(fd)
		if err != nil {
			t.Fatal(err)
		}
		kernel, err := unix.Getsockname(fd)
		if err != nil {
			t.Fatal(err)
		}
		var port int
		switch kernel := kernel.(type) {
		case *unix.SockaddrInet4:
			port = kernel.Port
		case *unix.SockaddrInet6:
			port = kernel.Port
		}
		if got.Addr() != local || int(got.Port()) != port || port == 0 {
			t.Fatalf("bound to %s: boundAddr says %v, getsockname port %d", host, got, port)
		}
	}
}
