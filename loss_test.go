// A lossy link costs time, never bytes: through a relay that drops,
// duplicates, reorders and delays datagrams from a seeded generator, every
// window size still delivers the exact file, with resends bounded by what
// was lost. The relay and the bound are here for the other tests that run
// through a lossy link.
package main

import (
	"fmt"
	"math/rand"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// impairment says what a lossyRelay does to the datagrams it forwards.
type impairment struct {
	loss, duplicate, reorder, delay float64 // probabilities per datagram
	seed                            int64
	// dropFirstReply drops the server's first datagram, and nothing else
	// of its own accord.
	dropFirstReply bool
}

// impairmentDelay is how long a delayed datagram is held.
const impairmentDelay = 2 * time.Millisecond

// lossyRelay sits between a client and the server and drops, duplicates and
// reorders datagrams in both directions, from a seeded generator. The client
// talks to one relay port; requests go on to the server's listening port,
// everything else to the transfer port the server last answered from.
type lossyRelay struct {
	front    *net.UDPConn // faces the client
	back     *net.UDPConn // faces the server
	listener netip.AddrPort

	mu       sync.Mutex
	client   netip.AddrPort
	transfer netip.AddrPort
	// replied is set once a datagram from the server came (from the
	// start, unless the impairment drops the first reply).
	replied bool

	dropped, duplicated, reordered, delayed atomic.Int64
	wg                                      sync.WaitGroup
}

func startRelay(t testing.TB, server netip.AddrPort, imp impairment) *lossyRelay {
	t.Helper()
	network := "udp4"
	if server.Addr().Is6() {
		network = "udp6"
	}
	loopback := net.UDPAddrFromAddrPort(netip.AddrPortFrom(server.Addr(), 0))
	front, err := net.ListenUDP(network, loopback)
	if err != nil {
		t.Fatal(err)
	}
	back, err := net.ListenUDP(network, loopback)
	if err != nil {
		t.Fatal(err)
	}
	r := &lossyRelay{front: front, back: back, listener: server, replied: !imp.dropFirstReply}
	r.wg.Add(2)
	go r.pump(front, rand.New(rand.NewSource(imp.seed)), imp, r.toServer)
	go r.pump(back, rand.New(rand.NewSource(imp.seed+1)), imp, r.toClient)
	t.Cleanup(func() {
		front.Close()
		back.Close()
		r.wg.Wait()
	})
	return r
}

func (r *lossyRelay) addr() netip.AddrPort {
	return r.front.LocalAddr().(*net.UDPAddr).AddrPort()
}

func (r *lossyRelay) impairments() int64 {
	return r.dropped.Load() + r.duplicated.Load() + r.reordered.Load() + r.delayed.Load()
}

// toServer forwards a client datagram; it returns the socket and address.
func (r *lossyRelay) toServer(pkt []byte, from netip.AddrPort) (*net.UDPConn, netip.AddrPort) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.client = from
	if len(pkt) >= 2 && (pkt[1] == opRRQ || pkt[1] == opWRQ) {
		return r.back, r.listener
	}
	return r.back, r.transfer
}

func (r *lossyRelay) toClient(pkt []byte, from netip.AddrPort) (*net.UDPConn, netip.AddrPort) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.transfer = from
	if !r.replied {
		r.replied = true
		r.dropped.Add(1)
		return nil, netip.AddrPort{} // dropped: pump forwards nothing without an address
	}
	return r.front, r.client
}

// pump forwards what arrives on in until the socket is closed. A reordered
// datagram is held back and sent after the next one, or after 5 ms.
func (r *lossyRelay) pump(in *net.UDPConn, rng *rand.Rand, imp impairment,
	route func([]byte, netip.AddrPort) (*net.UDPConn, netip.AddrPort)) {
	defer r.wg.Done()
	var held []byte
	var heldTo netip.AddrPort
	var heldConn *net.UDPConn
	flush := func() {
		if held != nil {
			heldConn.WriteToUDPAddrPort(held, heldTo)
			held = nil
		}
	}
	buf := make([]byte, 65536)
	for {
		in.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
		n, from, err := in.ReadFromUDPAddrPort(buf)
		if isTimeout(err) {
			flush()
			continue
		}
		if err != nil {
			return
		}
		pkt := append([]byte(nil), buf[:n]...)
		out, to := route(pkt, unmap(from))
		if !to.IsValid() {
			continue
		}
		switch x := rng.Float64(); {
		case x < imp.loss:
			r.dropped.Add(1)
			continue
		case x < imp.loss+imp.duplicate:
			r.duplicated.Add(1)
			out.WriteToUDPAddrPort(pkt, to)
		case x < imp.loss+imp.duplicate+imp.reorder && held == nil:
			r.reordered.Add(1)
			held, heldTo, heldConn = pkt, to, out
			continue
		case x < imp.loss+imp.duplicate+imp.reorder+imp.delay:
			r.delayed.Add(1)
			r.wg.Add(1)
			time.AfterFunc(impairmentDelay, func() {
				defer r.wg.Done()
				out.WriteToUDPAddrPort(pkt, to)
			})
			continue
		}
		out.WriteToUDPAddrPort(pkt, to)
		flush()
	}
}

func TestLossyLinkDeliversExactBytes(t *testing.T) {
	cases := []struct {
		loss float64
		size int
	}{
		{0.01, 200_000},
		{0.10, 60_000},
		{0.30, 20_000},
	}
	for _, listen := range loopbacks {
		ts := startServer(t, listen, "-t", "0.03", "--retries", "40")
		for _, c := range cases {
			name := fmt.Sprintf("lossy-%d", c.size)
			want := ts.writeFile(t, name, c.size)
			for _, window := range []int{1, 4, 16} {
				t.Run(fmt.Sprintf("%s/loss %.0f%%/window %d", listen, c.loss*100, window), func(t *testing.T) {
					relay := startRelay(t, ts.addr, impairment{loss: c.loss, duplicate: 0.01, reorder: 0.01, seed: int64(window)})
					res, err := tftpGet(relay.addr(), name, clientOptions{windowsize: window, retry: 30 * time.Millisecond, maxRetries: 200})
					if err != nil {
						t.Fatal(err)
					}
					assertSame(t, res.data, want)
					assertResendsBounded(t, relay, ts.result(t), window, 2)
				})
			}
		}
	}
}

// assertResendsBounded fails when the server resent more than perLoss
// windows per datagram the relay dropped, duplicated, reordered or delayed:
// without selective ACKs one loss costs at most the rest of its window,
// while a Sorcerer's Apprentice blow-up or spurious timeouts cost far more.
func assertResendsBounded(t *testing.T, relay *lossyRelay, r transferReport, window, perLoss int) {
	t.Helper()
	limit := perLoss * window * int(relay.impairments()+1)
	t.Logf("%d dropped of %d impairments; %d retransmits (limit %d), %d timeouts, rtt %v",
		relay.dropped.Load(), relay.impairments(), r.stats.retransmits, limit, r.stats.timeouts, r.stats.rtt)
	if r.stats.retransmits > limit {
		t.Fatalf("%d retransmits for %d impairments at window %d", r.stats.retransmits, relay.impairments(), window)
	}
}
