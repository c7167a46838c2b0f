// The protocol as RFC 1350, 2347-2349 and 7440 say it: exact bytes at every
// size, block size and window, options negotiated within the server's
// limits, block numbers past 65535, every malformed or misdirected packet
// answered with the right error (or none), retransmitted requests,
// timeouts, refusals and shutdown. The codec's fuzz targets are here too:
// no packet crashes the parser, and no negotiation grants more than asked.
package main

import (
	"bytes"
	"errors"
	"math/rand"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestTransferDeliversExactBytes(t *testing.T) {
	sizes := []int{0, 1, 511, 512, 513, 1024, 1468 * 3, 100_000}
	for _, listen := range loopbacks {
		ts := startServer(t, listen)
		for _, size := range sizes {
			name := "f" + strconv.Itoa(size)
			want := ts.writeFile(t, name, size)
			for _, o := range []clientOptions{{}, {blksize: 1468}, {blksize: 1468, windowsize: 16, tsize: true}} {
				res, err := tftpGet(ts.addr, name, o)
				if err != nil {
					t.Fatalf("%s %s %+v: %v", listen, name, o, err)
				}
				assertSame(t, res.data, want)
			}
		}
	}
}

func TestOptionNegotiation(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "--max-blksize", "1468")
	want := ts.writeFile(t, "file", 70_001)
	cases := []struct {
		name string
		opts clientOptions
		oack map[string]string // nil: no OACK expected
	}{
		{"none", clientOptions{}, nil},
		{"blksize", clientOptions{blksize: 1024}, map[string]string{"blksize": "1024"}},
		{"blksize above cap is lowered", clientOptions{blksize: 9000}, map[string]string{"blksize": "1468"}},
		{"tsize answers the size", clientOptions{tsize: true}, map[string]string{"tsize": "70001"}},
		{"timeout echoed exactly", clientOptions{timeout: 7}, map[string]string{"timeout": "7"}},
		{"timeout echoed as written", clientOptions{extra: []option{{"timeout", "07"}}}, map[string]string{"timeout": "07"}},
		{"windowsize 1", clientOptions{windowsize: 1}, map[string]string{"windowsize": "1"}},
		{"windowsize 4", clientOptions{windowsize: 4}, map[string]string{"windowsize": "4"}},
		{"windowsize 64", clientOptions{windowsize: 64, blksize: 512}, map[string]string{"windowsize": "64", "blksize": "512"}},
		{"windowsize 64 within window bytes", clientOptions{windowsize: 64, blksize: 1468}, map[string]string{"windowsize": "64", "blksize": "1468"}},
		{"all together", clientOptions{blksize: 1468, windowsize: 8, tsize: true, timeout: 2},
			map[string]string{"blksize": "1468", "windowsize": "8", "tsize": "70001", "timeout": "2"}},
		{"unknown option left out", clientOptions{blksize: 600, extra: []option{{"foo", "1"}}}, map[string]string{"blksize": "600"}},
		{"invalid values left out", clientOptions{extra: []option{{"blksize", "7"}, {"timeout", "0"}, {"windowsize", "x"}}}, nil},
		{"names are case-insensitive", clientOptions{extra: []option{{"BlkSize", "700"}, {"TSIZE", "0"}}}, map[string]string{"blksize": "700", "tsize": "70001"}},
		{"non-numeric tsize taken as 0", clientOptions{extra: []option{{"tsize", "enable"}}}, map[string]string{"tsize": "70001"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := tftpGet(ts.addr, "file", c.opts)
			if err != nil {
				t.Fatal(err)
			}
			assertSame(t, res.data, want)
			if c.oack == nil {
				if res.oack != nil {
					t.Fatalf("got OACK %v, want none", res.oack)
				}
				return
			}
			if len(res.oack) != len(c.oack) {
				t.Fatalf("OACK %v, want %v", res.oack, c.oack)
			}
			for k, v := range c.oack {
				if res.oack[k] != v {
					t.Fatalf("OACK %v, want %v", res.oack, c.oack)
				}
			}
		})
	}
}

func TestWindowCappedToFitReceiverBuffer(t *testing.T) {
	for _, c := range []struct {
		flags      []string
		blksize    int
		wantWindow string
	}{
		{[]string{"--max-window-bytes", "65536"}, 8192, "8"}, // 65536 / 8192
		{nil, 4096, "24"}, // the default 96 KiB / 4096
	} {
		ts := startServer(t, "127.0.0.1", c.flags...)
		want := ts.writeFile(t, "file", 300_000)
		res, err := tftpGet(ts.addr, "file", clientOptions{blksize: c.blksize, windowsize: 64})
		if err != nil {
			t.Fatal(err)
		}
		assertSame(t, res.data, want)
		if res.oack["windowsize"] != c.wantWindow {
			t.Fatalf("%v, blksize %d: windowsize %q, want %s", c.flags, c.blksize, res.oack["windowsize"], c.wantWindow)
		}
	}
}

func TestBlockNumbersWrapAround(t *testing.T) {
	ts := startServer(t, "127.0.0.1")
	// 8-byte blocks: 70,000 blocks, past 65535, ending on an exact multiple.
	want := ts.writeFile(t, "big", 8*70_000)
	for _, window := range []int{1, 16} {
		res, err := tftpGet(ts.addr, "big", clientOptions{blksize: 8, windowsize: window})
		if err != nil {
			t.Fatal(err)
		}
		assertSame(t, res.data, want)
	}
}

func TestLargeBlocksOnLoopback(t *testing.T) {
	for _, listen := range loopbacks {
		ts := startServer(t, listen)
		want := ts.writeFile(t, "file", 1_000_000)
		res, err := tftpGet(ts.addr, "file", clientOptions{blksize: 65464, tsize: true})
		if err != nil {
			t.Fatal(err)
		}
		assertSame(t, res.data, want)
		if res.oack["blksize"] != "65464" {
			t.Fatalf("%s: blksize %q, want 65464 (loopback MTU)", listen, res.oack["blksize"])
		}
	}
}

func TestBadInputGetsTheRightError(t *testing.T) {
	ts := startServer(t, "127.0.0.1")
	want := ts.writeFile(t, "good", 2000)
	if err := os.Mkdir(filepath.Join(ts.root, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(ts.root, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		pkt  []byte
		code int // -1: no reply at all
	}{
		{"one byte", []byte{0}, codeIllegalOp},
		{"opcode only", []byte{0, opRRQ}, codeIllegalOp},
		{"no NUL", []byte("\x00\x01good\x00octet"), codeIllegalOp},
		{"no mode", []byte("\x00\x01good\x00"), codeIllegalOp},
		{"empty name", rrq("", "octet"), codeIllegalOp},
		{"unknown mode", rrq("good", "ebcdic"), codeIllegalOp},
		{"mail mode", rrq("good", "mail"), codeIllegalOp},
		{"unknown opcode", []byte{0, 9, 'x', 0}, codeIllegalOp},
		{"oversized", append(rrq("good", "octet", "blksize"), bytes.Repeat([]byte("x"), 20000)...), codeIllegalOp},
		{"dot dot", rrq("../etc/passwd", "octet"), codeAccess},
		{"dot dot inside", rrq("a/../../good", "octet"), codeAccess},
		{"absolute path stays below root", rrq("/etc/passwd", "octet"), codeNotFound},
		{"missing", rrq("nothing-here", "octet"), codeNotFound},
		{"file as directory", rrq("good/x", "octet"), codeNotFound},
		{"directory", rrq("dir", "octet"), codeAccess},
		{"root itself", rrq("/", "octet"), codeAccess},
		{"fifo", rrq("fifo", "octet"), codeAccess},
		{"write without --wrq-devnull", append([]byte{0, opWRQ}, "good\x00octet\x00"...), codeAccess},
		{"stray ACK", []byte{0, opACK, 0, 1}, codeUnknownTID},
		{"stray DATA", []byte{0, opDATA, 0, 1, 'x'}, codeUnknownTID},
		{"stray OACK", []byte{0, opOACK, 0}, codeUnknownTID},
		{"stray ERROR is never answered", []byte{0, opERROR, 0, 0, 0}, -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wait := 2 * time.Second
			if c.code < 0 {
				wait = 300 * time.Millisecond
			}
			reply := exchange(t, ts.addr, c.pkt, wait)
			switch {
			case c.code < 0 && reply != nil:
				t.Fatalf("reply %q, want none", reply)
			case c.code >= 0 && (len(reply) < 5 || reply[1] != opERROR):
				t.Fatalf("reply %q, want ERROR %d", reply, c.code)
			case c.code >= 0 && int(errorFromPacket(reply).code) != c.code:
				t.Fatalf("ERROR %d %q, want code %d", errorFromPacket(reply).code, errorFromPacket(reply).msg, c.code)
			case c.code >= 0 && strings.Contains(errorFromPacket(reply).msg, ts.root):
				t.Fatalf("error text %q leaks the root path", errorFromPacket(reply).msg)
			}
			// The server goes on serving normally.
			res, err := tftpGet(ts.addr, "good", clientOptions{})
			if err != nil {
				t.Fatal(err)
			}
			assertSame(t, res.data, want)
		})
	}
}

func TestTrailingNULPaddingIsTolerated(t *testing.T) {
	ts := startServer(t, "127.0.0.1")
	want := ts.writeFile(t, "f", 700)
	conn, err := dialClient(ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pkt := append(rrq("f", "octet", "blksize", "1024"), 0, 0, 0)
	conn.WriteToUDPAddrPort(pkt, ts.addr)
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := conn.ReadFromUDPAddrPort(buf)
	if err != nil || buf[1] != opOACK {
		t.Fatalf("reply %q, err %v; want OACK", buf[:n], err)
	}
	conn.WriteToUDPAddrPort([]byte{0, opACK, 0, 0}, from)
	n, _, err = conn.ReadFromUDPAddrPort(buf)
	if err != nil || buf[1] != opDATA {
		t.Fatalf("reply %q, err %v; want DATA", buf[:n], err)
	}
	assertSame(t, buf[4:n], want)
}

// TestUnknownTIDGetsError5AndTransferGoesOn sends a stray ACK to a
// transfer's port, on a thread of its own and in Go's poller: the socket
// beside the connected one answers it, and the transfer goes on.
func TestUnknownTIDGetsError5AndTransferGoesOn(t *testing.T) {
	onBothTransferSockets(t, strayGetsError5)
}

// onBothTransferSockets runs test twice: with a transfer's waits on a
// thread of its own (threadConn), and with none allowed, in Go's poller
// (socketConn). The servers it starts must be started inside test.
func onBothTransferSockets(t *testing.T, test func(t *testing.T)) {
	for name, ownThreads := range map[string]int32{"own thread": maxOwnThreads, "poller": 0} {
		t.Run(name, func(t *testing.T) {
			saved := maxOwnThreads
			maxOwnThreads = ownThreads
			t.Cleanup(func() { maxOwnThreads = saved }) // after the server's, which is registered later
			test(t)
		})
	}
}

// strayGetsError5 fetches a file in lockstep and, once the transfer took
// strayAfter ACKs, sends a stray ACK to its port from another socket.
func strayGetsError5(t *testing.T) {
	ts := startServer(t, "127.0.0.1")
	want := ts.writeFile(t, "f", (strayAfter+10)*512+100)
	conn, err := dialClient(ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.WriteToUDPAddrPort(rrq("f", "octet"), ts.addr)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1024)
	n, transferPort, err := conn.ReadFromUDPAddrPort(buf)
	if err != nil || buf[1] != opDATA {
		t.Fatalf("first reply %q, %v", buf[:n], err)
	}
	got := append([]byte(nil), buf[4:n]...)
	for blk := uint16(1); n-4 == 512; blk++ {
		if blk == strayAfter+1 {
			stranger := exchange(t, transferPort, []byte{0, opACK, 0, 1}, 2*time.Second)
			if len(stranger) < 4 || stranger[1] != opERROR || errorFromPacket(stranger).code != codeUnknownTID {
				t.Fatalf("stranger got %q, want ERROR 5", stranger)
			}
		}
		conn.WriteToUDPAddrPort([]byte{0, opACK, byte(blk >> 8), byte(blk)}, transferPort)
		// A slow ACK (the race detector) may draw a probe's copy of
		// block blk before block blk+1: skip it.
		for again := true; again; again = buf[1] == opDATA && uint16(buf[2])<<8|uint16(buf[3]) == blk {
			if n, _, err = conn.ReadFromUDPAddrPort(buf); err != nil {
				t.Fatal(err)
			}
		}
		if buf[1] != opDATA || uint16(buf[2])<<8|uint16(buf[3]) != blk+1 {
			t.Fatalf("got %q, want DATA %d", buf[:4], blk+1)
		}
		got = append(got, buf[4:n]...)
	}
	conn.WriteToUDPAddrPort([]byte{0, opACK, buf[2], buf[3]}, transferPort)
	assertSame(t, got, want)
}

// TestRepeatedRequestResendsTheLostFirstReply: a client whose first reply
// was lost asks again from the same port (iPXE after a quarter of a second).
// The listener sends the reply again at once, from the transfer's port,
// where the engine's own timer would wait a second while no round trip is
// known; the transfer runs on, and the answer to the reply, which may answer
// the copy, is no round-trip sample (Karn). Each engine's first reply, in
// both socket modes.
func TestRepeatedRequestResendsTheLostFirstReply(t *testing.T) {
	cases := []struct {
		name string
		op   uint16
		opts []string
	}{
		{"read, DATA 1", opRRQ, nil},
		{"read, OACK", opRRQ, []string{"blksize", "512"}},
		{"write, ACK 0", opWRQ, nil},
		{"write, OACK", opWRQ, []string{"blksize", "512"}},
	}
	for _, mode := range []string{"own port", "--single-port"} {
		args := []string{"-t", "3"} // the engine's first timeout is then RFC 6298's 1 s
		if mode == "--single-port" {
			args = append(args, mode)
		}
		ts, dir := startUploadServer(t, "127.0.0.1", args...)
		want := ts.writeFile(t, "f", 3*512+100)
		for i, c := range cases {
			t.Run(mode+"/"+c.name, func(t *testing.T) {
				name := "f"
				if c.op == opWRQ {
					name = "up" + strconv.Itoa(i)
				}
				req := rrq(name, append([]string{"octet"}, c.opts...)...)
				req[1] = byte(c.op)
				p := newScriptedPeer(t, ts.addr, req)
				first := bytes.Clone(p.next(5 * time.Second))
				transfer := p.server
				// The client's timer runs longer than the reply's round trip: a
				// repeat sooner is a copy the network made, and draws nothing.
				time.Sleep(100 * time.Millisecond)
				if _, err := p.conn.WriteToUDPAddrPort(req, ts.addr); err != nil {
					t.Fatal(err)
				}
				if again := p.next(5 * time.Second); !bytes.Equal(again, first) || p.server != transfer {
					t.Fatalf("the repeat drew %q from %v; want %q again from %v", again, p.server, first, transfer)
				}
				if c.op == opRRQ {
					assertSame(t, finishLockstepRead(p, first, want), want)
				} else {
					finishLockstepWrite(p, want)
					assertSame(t, readFile(t, filepath.Join(dir, name)), want)
				}
				r := ts.result(t)
				switch {
				case r.err != nil:
					t.Fatalf("session: %v", r.err)
				case r.stats.retransmits != 1 || r.stats.timeouts != 0:
					t.Fatalf("%d resends, %d timeouts; want the listener's one copy and no timeout", r.stats.retransmits, r.stats.timeouts)
				case r.stats.rtt >= 50*time.Millisecond:
					t.Fatalf("round trip %v: the answer to the first reply, 100 ms after it, was taken for one", r.stats.rtt)
				}
			})
		}
	}
}

// finishLockstepRead takes a read's blocks (blksize 512) after its first
// reply, first, ACKing each, and returns what came.
func finishLockstepRead(p *scriptedPeer, first, source []byte) []byte {
	p.t.Helper()
	var got []byte
	pkt := first
	for blk := uint16(0); ; {
		if pkt[1] == opDATA {
			if blk = p.dataBlock(pkt, source, 512); int(blk) != len(got)/512+1 {
				p.t.Fatalf("block %d after %d bytes", blk, len(got))
			}
			got = append(got, pkt[4:]...)
		}
		p.ack(blk)
		if pkt[1] == opDATA && len(pkt) < 4+512 {
			return got
		}
		if pkt = p.next(5 * time.Second); pkt == nil {
			p.t.Fatalf("nothing after block %d", blk)
		}
	}
}

// finishLockstepWrite sends data (blksize 512) once the first reply came,
// waiting for each block's ACK.
func finishLockstepWrite(p *scriptedPeer, data []byte) {
	p.t.Helper()
	for blk := 1; (blk-1)*512 <= len(data); blk++ {
		block := data[(blk-1)*512 : min(blk*512, len(data))]
		pkt := append([]byte{0, opDATA, byte(blk >> 8), byte(blk)}, block...)
		if _, err := p.conn.WriteToUDPAddrPort(pkt, p.server); err != nil {
			p.t.Fatal(err)
		}
		if ack := p.next(5 * time.Second); !bytes.Equal(ack, []byte{0, opACK, byte(blk >> 8), byte(blk)}) {
			p.t.Fatalf("block %d drew %q, want its ACK", blk, ack)
		}
	}
}

// TestFirstReplyIgnoresCopiesTheNetworkMade: the listener resends the first
// reply for a repeat that comes minClientTimer after its latest copy (its
// own or the engine's), not sooner, and not once the engine has withdrawn it.
func TestFirstReplyIgnoresCopiesTheNetworkMade(t *testing.T) {
	var f firstReply
	conn := &sentPackets{}
	sent := time.Now()
	f.offer(conn, []byte("reply"), sent)
	for _, step := range []struct {
		after time.Duration
		sent  bool
	}{
		{minClientTimer / 2, false}, // a copy the network made, or one that crossed the reply
		{minClientTimer, true},
		{minClientTimer + minClientTimer/2, false}, // counted from the latest copy
		{2 * minClientTimer, true},
	} {
		if got := f.repeat(sent.Add(step.after)); got != step.sent {
			t.Fatalf("a repeat %v after the reply: resent %v, want %v", step.after, got, step.sent)
		}
	}
	f.resent(sent.Add(3 * minClientTimer)) // the engine's own timer
	if f.repeat(sent.Add(3*minClientTimer + minClientTimer/2)) {
		t.Fatal("a repeat soon after the engine's copy drew another")
	}
	if copies := f.withdraw(); copies != 2 {
		t.Fatalf("withdraw counted %d copies, want 2", copies)
	}
	if f.repeat(sent.Add(time.Hour)) {
		t.Fatal("a repeat after the client answered drew the reply")
	}
	if len(conn.packets) != 2 || string(conn.packets[0]) != "reply" || string(conn.packets[1]) != "reply" {
		t.Fatalf("sent %q, want the reply twice", conn.packets)
	}
}

func TestRetransmittedRequestStartsOneTransfer(t *testing.T) {
	ts := startServer(t, "127.0.0.1")
	want := ts.writeFile(t, "f", 3000)
	conn, err := dialClient(ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := rrq("f", "octet", "blksize", "1024")
	conn.WriteToUDPAddrPort(req, ts.addr)
	conn.WriteToUDPAddrPort(req, ts.addr)
	buf := make([]byte, 2048)
	senders := map[netip.AddrPort]int{}
	var transfer netip.AddrPort
	conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		if buf[1] != opOACK {
			t.Fatalf("got %q, want OACK", buf[:n])
		}
		senders[from]++
		transfer = from
	}
	if len(senders) != 1 {
		t.Fatalf("OACKs came from %d transfer ports, want 1", len(senders))
	}
	var got []byte
	for blk := uint16(0); ; blk++ {
		conn.WriteToUDPAddrPort([]byte{0, opACK, byte(blk >> 8), byte(blk)}, transfer)
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatal(err)
		}
		if buf[1] == opOACK {
			continue // a resend that crossed our ACK
		}
		got = append(got, buf[4:n]...)
		if n-4 < 1024 {
			conn.WriteToUDPAddrPort([]byte{0, opACK, buf[2], buf[3]}, transfer)
			break
		}
	}
	assertSame(t, got, want)
}

func TestErrorAfterOACKEndsQuietly(t *testing.T) {
	ts := startServer(t, "127.0.0.1")
	ts.writeFile(t, "efi", 4096)
	conn, err := dialClient(ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.WriteToUDPAddrPort(rrq("efi", "octet", "tsize", "0"), ts.addr)
	buf := make([]byte, 1024)
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	// The OACK is resent while unanswered.
	var from netip.AddrPort
	for i := range 2 {
		n, f, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil || buf[1] != opOACK || parseOACK(buf[:n])["tsize"] != "4096" {
			t.Fatalf("OACK #%d: %q, %v", i+1, buf[:n], err)
		}
		from = f
	}
	// The UEFI size probe: ERROR 8 once the size is known.
	conn.WriteToUDPAddrPort(append([]byte{0, opERROR, 0, 8}, "tsize only\x00"...), from)
	r := ts.result(t)
	if !errors.Is(r.err, errClientAbort) {
		t.Fatalf("session ended with %v, want the client's abort", r.err)
	}
	conn.SetReadDeadline(time.Now().Add(400 * time.Millisecond))
	if n, _, err := conn.ReadFromUDPAddrPort(buf); err == nil {
		t.Fatalf("server sent %q after the client's ERROR", buf[:n])
	}
}

func TestSilentClientGetsTimeoutError(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "--retries", "2")
	ts.writeFile(t, "f", 4096)
	conn, err := dialClient(ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	conn.WriteToUDPAddrPort(rrq("f", "octet"), ts.addr)
	buf := make([]byte, 1024)
	datas := 0
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, _, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("no ERROR after %d DATA: %v", datas, err)
		}
		if buf[1] == opERROR {
			if errorFromPacket(buf[:n]).code != codeUndefined {
				t.Fatalf("ERROR %q, want code 0", buf[:n])
			}
			break
		}
		datas++
	}
	if datas != 3 {
		t.Fatalf("block 1 sent %d times, want 3 (first send and 2 retries)", datas)
	}
	// Given up after --retries times -t (0.2 s) of silence.
	if took := time.Since(start); took < 300*time.Millisecond || took > 2400*time.Millisecond {
		t.Fatalf("ERROR after %v, want after about 0.4 s", took.Round(time.Millisecond))
	}
}

func TestMaxConnectionsRefusesAndRecovers(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "-m", "1", "--retries", "1")
	want := ts.writeFile(t, "f", 2000)
	// A client that takes the only slot and never answers.
	hog, err := dialClient(ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer hog.Close()
	hog.WriteToUDPAddrPort(rrq("f", "octet"), ts.addr)
	hog.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, _, err := hog.ReadFromUDPAddrPort(make([]byte, 600)); err != nil {
		t.Fatal(err)
	}
	_, err = tftpGet(ts.addr, "f", clientOptions{maxRetries: 1})
	var we *wireError
	if !errors.As(err, &we) || !strings.Contains(we.msg, "busy") {
		t.Fatalf("second client got %v, want a busy ERROR", err)
	}
	ts.result(t) // the hog times out
	res, err := tftpGet(ts.addr, "f", clientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
}

func TestNoRFC2347IgnoresOptions(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "--no-rfc2347")
	want := ts.writeFile(t, "f", 5000)
	res, err := tftpGet(ts.addr, "f", clientOptions{blksize: 1468, windowsize: 8, tsize: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.oack != nil {
		t.Fatalf("OACK %v sent with --no-rfc2347", res.oack)
	}
	assertSame(t, res.data, want)
}

func TestWriteDevnullAcceptsAndDiscards(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "--wrq-devnull")
	data := make([]byte, 10_000)
	rand.New(rand.NewSource(1)).Read(data)
	for _, o := range []clientOptions{{}, {blksize: 1468, tsize: true}} {
		if _, err := tftpPut(ts.addr, "upload", data, o); err != nil {
			t.Fatal(err)
		}
		r := ts.result(t)
		if r.err != nil || r.stats.bytes != int64(len(data)) {
			t.Fatalf("server took %d bytes (%v), want %d", r.stats.bytes, r.err, len(data))
		}
		if _, err := os.Stat(filepath.Join(ts.root, "upload")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("upload was written to disk: %v", err)
		}
	}
}

func TestShutdownLetsTransfersFinish(t *testing.T) {
	ts := startServer(t, "127.0.0.1")
	want := ts.writeFile(t, "f", 200_000)
	type fetched struct {
		res *clientResult
		err error
	}
	done := make(chan fetched)
	started := make(chan struct{})
	go func() {
		// blksize 512, window 1: a slow transfer of 391 round trips.
		res, err := tftpGet(ts.addr, "f", clientOptions{firstData: started})
		done <- fetched{res, err}
	}()
	<-started
	ts.shutdown(5 * time.Second)
	f := <-done
	if f.err != nil {
		t.Fatal(f.err)
	}
	assertSame(t, f.res.data, want)
	if reply := exchange(t, ts.addr, rrq("f", "octet"), 300*time.Millisecond); reply != nil {
		t.Fatalf("server answered %q after shutdown", reply)
	}
}

func TestSameClientPortFetchesSameFileAgainAtOnce(t *testing.T) {
	ts := startServer(t, "127.0.0.1")
	want := ts.writeFile(t, "f", 3000)
	client := newBenchClient(t, ts.addr, "f", 1024, 4)
	for i := range 5 {
		if _, _, _, err := client.get(ts.addr, want); err != nil {
			t.Fatalf("fetch %d from the same port: %v", i+1, err)
		}
	}
}

// FuzzParseRequest: no packet may crash the parser, and what it accepts is a
// well-formed request.
func FuzzParseRequest(f *testing.F) {
	for _, seed := range [][]byte{
		rrq("file", "octet"),
		rrq("file", "netascii", "blksize", "1468", "tsize", "0", "windowsize", "16", "timeout", "3"),
		rrq("file", "OCTET", "BLKSIZE", "512", "", ""),
		append([]byte{0, opWRQ}, "up\x00octet\x00tsize\x00100\x00"...),
		{0, opRRQ, 0, 0},
		{0, 1},
		{0, opACK, 0, 1},
		[]byte("\x00\x01a\x00mail\x00"),
		[]byte("\x00\x01a\x00octet\x00odd\x00"),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		req, err := parseRequest(pkt)
		if err != nil {
			if toWireError(err).code != codeIllegalOp {
				t.Fatalf("parse error %v maps to code %d, want 4", err, toWireError(err).code)
			}
			return
		}
		if req.filename == "" || (req.op != opRRQ && req.op != opWRQ) {
			t.Fatalf("accepted a malformed request: %+v", req)
		}
		for _, o := range req.options {
			if o.name == "" || o.name != strings.ToLower(o.name) {
				t.Fatalf("option name %q not normalised", o.name)
			}
		}
	})
}

// FuzzNegotiate: whatever the client asks, the answer stays within the
// protocol's and the server's limits and never grants more than was asked.
func FuzzNegotiate(f *testing.F) {
	f.Add("blksize", "1468", "windowsize", "16", int64(1000))
	f.Add("timeout", "255", "tsize", "0", int64(-1))
	f.Add("blksize", "99999999999999999999999", "windowsize", "0", int64(5))
	f.Add("tsize", "enable", "timeout", "-1", int64(1<<40))
	f.Add("utimeout", "10000", "rollover", "1", int64(100))
	f.Add("timeout", "1", "utimeout", "255000000", int64(0))
	f.Add("rollover", "01", "utimeout", "9999", int64(7))
	f.Fuzz(func(t *testing.T, n1, v1, n2, v2 string, size int64) {
		req := &request{op: opRRQ, filename: "f", options: []option{
			{strings.ToLower(n1), v1}, {strings.ToLower(n2), v2},
		}}
		lim := negotiateLimits{maxBlksize: 1468, maxWindowsize: 64, maxWindowBytes: 98304, timeout: 3 * time.Second}
		p := negotiate(req, size, lim, func(option) {})
		if p.blksize < minBlksize || p.blksize > 1468 || p.windowsize < 1 || p.windowsize > 64 {
			t.Fatalf("out of limits: %+v", p)
		}
		if p.timeout < 10*time.Millisecond || p.timeout > 255*time.Second || p.rollover > 1 {
			t.Fatalf("timeout %v, rollover %d", p.timeout, p.rollover)
		}
		if p.rollover == 1 && p.windowsize > maxWindowsize-1 {
			t.Fatalf("windowsize %d with rollover 1: its numbers repeat", p.windowsize)
		}
		if p.answers == nil {
			return
		}
		answered := parseOACK(appendOACK(nil, p.answers))
		for k, v := range answered {
			asked := ""
			for _, o := range req.options {
				if o.name == k {
					asked = o.value
					break
				}
			}
			switch k {
			case "blksize", "windowsize":
				got, _ := strconv.Atoi(v)
				want, err := strconv.Atoi(asked)
				if err != nil || got > want {
					t.Fatalf("%s %s answered to %q", k, v, asked)
				}
			case "timeout", "utimeout":
				if v != asked {
					t.Fatalf("%s %q answered to %q", k, v, asked)
				}
			case "rollover":
				if n, err := strconv.Atoi(v); v != asked || err != nil || uint16(n) != p.rollover {
					t.Fatalf("rollover %q answered to %q, transfer runs with %d", v, asked, p.rollover)
				}
			case "tsize":
				if v != strconv.FormatInt(size, 10) {
					t.Fatalf("tsize %s, size %d", v, size)
				}
			default:
				t.Fatalf("unasked option %q in OACK", k)
			}
		}
	})
}
