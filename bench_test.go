package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"testing"
	"time"
)

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

// BenchmarkTransfer fetches a file on loopback for each blksize and windowsize
// a client may ask for, with the server's default limits: the granted window
// is reported, as the window-bytes cap lowers it for large blocks.
func BenchmarkTransfer(b *testing.B) {
	for _, blksize := range []int{512, 1468, 65464} {
		for _, window := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("blksize=%d/window=%d", blksize, window), func(b *testing.B) {
				ts := startServer(b, "127.0.0.1", "--log-level", "warn")
				size := 256 * blksize
				want := ts.writeFile(b, "bench", size)
				client := newBenchClient(b, ts.addr, "bench", blksize, window)
				b.SetBytes(int64(size))
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				b.ResetTimer()
				packets, granted, calls := 0, 0, 0
				for range b.N {
					n, _, w, err := client.get(ts.addr, want)
					if err != nil {
						b.Fatal(err)
					}
					packets += n
					granted = w
					calls += (<-ts.results).stats.dataCalls
				}
				b.StopTimer()
				runtime.ReadMemStats(&after)
				b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(packets), "allocs/pkt")
				b.ReportMetric(float64(calls)/float64(packets), "syscalls/block")
				b.ReportMetric(float64(granted), "window")
			})
		}
	}
}

// BenchmarkLoopbackCeiling is what loopback carries in the shape of a
// window of 64 blocks of 1468 bytes, without TFTP: a sender hands a reader
// 64 datagrams of 1472 bytes in one GSO batch, the reader takes them one
// read each and answers, over and over. BenchmarkTransfer's window=64 is
// measured against it.
func BenchmarkLoopbackCeiling(b *testing.B) {
	const window, segSize = 64, 4 + 1468
	send, recv := batchPair(b, "udp4", "127.0.0.1")
	var mode socketBatchMode
	sender := newBatchSender(send, recv.LocalAddr().(*net.UDPAddr).AddrPort(), nil, &mode, slog.New(slog.NewTextHandler(io.Discard, nil)))
	batch := bytes.Repeat([]byte{0, opDATA, 0, 0}, window*segSize/4)
	buf := make([]byte, 65536)
	b.SetBytes(256 * 1468) // as BenchmarkTransfer's file of 256 blocks
	b.ResetTimer()
	for range b.N {
		for range 256 / window {
			if _, err := sender.send(batch, segSize); err != nil {
				b.Fatal(err)
			}
			for range window {
				recv.SetReadDeadline(time.Now().Add(time.Second))
				if _, _, err := recv.ReadFromUDPAddrPort(buf); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
}
