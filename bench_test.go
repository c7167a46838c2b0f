// How fast and how lean a download is on loopback: the server's
// allocations, syscalls per block and granted window for each blksize and
// windowsize a client may ask for, measured against what loopback carries
// without TFTP in the same shape.
package main

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"testing"
	"time"
)

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

// BenchmarkSmallFile fetches a file of 1,000 bytes, one block, over and
// over: a boot's menus, scripts and configurations, where what a transfer
// costs to begin and end (its socket, the file, the MTU, the buffers) is
// all it costs. B/op and allocs/op count the client's few as well.
func BenchmarkSmallFile(b *testing.B) {
	for _, window := range []int{1, 16} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) {
			ts := startServer(b, "127.0.0.1", "--log-level", "warn")
			want := ts.writeFile(b, "menu", 1000)
			client := newBenchClient(b, ts.addr, "menu", 1468, window)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, _, _, err := client.get(ts.addr, want); err != nil {
					b.Fatal(err)
				}
				<-ts.results
			}
		})
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
