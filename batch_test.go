// Batched sends deliver what one send each would: every way batch.go may
// send a window (UDP GSO, sendmmsg, one by one) gets every datagram there
// whole and in order, a kernel that refuses GSO is fallen back from once,
// peers of either family are addressed right, and the startup probe finds
// GSO where the kernel has it.
package main

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// batchPair is a sending socket and a reader on loopback.
func batchPair(t testing.TB, network, host string) (send, recv *net.UDPConn) {
	t.Helper()
	addr := &net.UDPAddr{IP: net.ParseIP(host)}
	send, err := net.ListenUDP(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	recv, err = net.ListenUDP(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { send.Close(); recv.Close() })
	return send, recv
}

// windowOf lays count DATA packets of blksize (the last one short) end to
// end, as the sender does, each with its block number and a payload that
// tells the blocks apart.
func windowOf(count, blksize, last int) []byte {
	var buf []byte
	for i := range count {
		n := blksize
		if i == count-1 {
			n = last
		}
		buf = append(buf, 0, opDATA, byte(i>>8), byte(i))
		buf = append(buf, bytes.Repeat([]byte{byte('a' + i%26)}, n)...)
	}
	return buf
}

// expectDatagrams reads the batch back and checks every datagram, in order.
func expectDatagrams(t *testing.T, recv *net.UDPConn, want []byte, segSize int) {
	t.Helper()
	buf := make([]byte, 65536)
	for off := 0; off < len(want); off += segSize {
		recv.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := recv.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("datagram at offset %d: %v", off, err)
		}
		if !bytes.Equal(buf[:n], want[off:min(off+segSize, len(want))]) {
			t.Fatalf("datagram at offset %d: %d bytes that differ from the %d sent", off, n, min(segSize, len(want)-off))
		}
	}
	recv.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, _, err := recv.ReadFromUDPAddrPort(buf); err == nil {
		t.Fatalf("a datagram of %d bytes more than the batch", n)
	}
}

// TestBatchModesDeliverEveryDatagram: each way of sending a batch (UDP GSO,
// sendmmsg, one send each) delivers every datagram of a window, in order
// and whole, the last one short, on IPv4 and IPv6, from a socket connected
// to the peer (a transfer's, whose sendmmsg names no address) and from one
// that is not, in batches larger than one call takes.
func TestBatchModesDeliverEveryDatagram(t *testing.T) {
	for _, fam := range []struct{ network, host string }{{"udp4", "127.0.0.1"}, {"udp6", "::1"}} {
		for _, connected := range []bool{false, true} {
			for _, mode := range []batchMode{batchGSO, batchMmsg, batchSingle} {
				for _, shape := range []struct{ count, blksize, last int }{{16, 1468, 100}, {100, 512, 0}, {3, 8192, 8192}, {1, 1468, 7}} {
					send, recv := batchPair(t, fam.network, fam.host)
					peer := recv.LocalAddr().(*net.UDPAddr).AddrPort()
					if connected {
						send.Close()
						var err error
						if send, err = net.DialUDP(fam.network, nil, net.UDPAddrFromAddrPort(peer)); err != nil {
							t.Fatal(err)
						}
						t.Cleanup(func() { send.Close() })
					}
					var sockMode socketBatchMode
					sockMode.mode.Store(int32(mode))
					b := newBatchSender(send, peer, nil, &sockMode, slog.New(slog.NewTextHandler(io.Discard, nil)))
					buf := windowOf(shape.count, shape.blksize, shape.last)
					calls, err := b.send(buf, 4+shape.blksize)
					if err != nil {
						t.Fatalf("%s connected %v %v %+v: %v", fam.network, connected, mode, shape, err)
					}
					if want := (shape.count + maxBatch - 1) / maxBatch; mode == batchMmsg && calls != want {
						t.Fatalf("%s connected %v %+v: %d sendmmsg calls, want %d", fam.network, connected, shape, calls, want)
					}
					expectDatagrams(t, recv, buf, 4+shape.blksize)
					if sockMode.get() != mode {
						t.Fatalf("%s connected %v %v %+v: the socket moved to %v", fam.network, connected, mode, shape, sockMode.get())
					}
				}
			}
		}
	}
}

// TestRefusedGSOFallsBackOnce: a socket without UDP checksums (SO_NO_CHECK)
// is refused UDP GSO by the kernel. The batch still arrives whole, by
// sendmmsg, the socket keeps to sendmmsg, and that is logged once at debug.
func TestRefusedGSOFallsBackOnce(t *testing.T) {
	send, recv := batchPair(t, "udp4", "127.0.0.1")
	raw, err := send.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_NO_CHECK, 1) })
	if err != nil {
		t.Fatal(err)
	}
	var logged strings.Builder
	log := slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var sockMode socketBatchMode
	b := newBatchSender(send, recv.LocalAddr().(*net.UDPAddr).AddrPort(), nil, &sockMode, log)
	for range 3 {
		buf := windowOf(16, 1468, 300)
		if _, err := b.send(buf, 4+1468); err != nil {
			t.Fatal(err)
		}
		expectDatagrams(t, recv, buf, 4+1468)
	}
	if sockMode.get() != batchMmsg {
		t.Fatalf("the socket sends by %v, want sendmmsg after GSO was refused", sockMode.get())
	}
	if n := strings.Count(logged.String(), "batched send refused"); n != 1 {
		t.Fatalf("the fallback was logged %d times, want once:\n%s", n, logged.String())
	}
}

// TestBatchSockaddrOfMappedAndZonedPeers: sendmmsg needs the peer as a raw
// sockaddr of the socket's family: an IPv4 peer of a dual-stack socket is a
// mapped IPv6 address.
func TestBatchSockaddrOfMappedAndZonedPeers(t *testing.T) {
	send, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv6unspecified})
	if err != nil {
		t.Skipf("no dual-stack socket: %v", err)
	}
	defer send.Close()
	recv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer recv.Close()
	var sockMode socketBatchMode
	sockMode.mode.Store(int32(batchMmsg))
	peer := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), recv.LocalAddr().(*net.UDPAddr).AddrPort().Port())
	b := newBatchSender(send, peer, nil, &sockMode, slog.New(slog.NewTextHandler(io.Discard, nil)))
	buf := windowOf(8, 512, 40)
	if _, err := b.send(buf, 4+512); err != nil {
		t.Fatal(err)
	}
	expectDatagrams(t, recv, buf, 4+512)
}

// TestGSOProbeOnThisKernel: the startup probe finds UDP GSO working on a
// kernel that has it (4.18 and later), so sockets start with it. Under
// qemu-user on a host of the other byte order it fails instead, and the
// router builds' test (firmware tag) shows those still serving by sendmmsg.
func TestGSOProbeOnThisKernel(t *testing.T) {
	if err := probeGSO(); err != nil {
		t.Fatalf("UDP GSO probe: %v", err)
	}
	ts := startServer(t, "127.0.0.1")
	if ts.env.firstBatchMode != batchGSO || ts.listeners[0].batch.get() != batchGSO {
		t.Fatalf("sockets start with %v (listener %v), want UDP GSO", ts.env.firstBatchMode, ts.listeners[0].batch.get())
	}
}
