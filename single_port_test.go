// --single-port: every transfer is answered from the listening port, several
// run at once over that one socket, loss is recovered from there too, and a
// shutdown lets running transfers finish.
package main

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestSinglePortAnswersFromTheListeningPort(t *testing.T) {
	for _, listen := range loopbacks {
		ts := startServer(t, listen, "--single-port")
		want := ts.writeFile(t, "f", 3000)
		reply := exchange(t, ts.addr, rrq("f", "octet", "blksize", "1024"), 2*time.Second)
		if len(reply) < 2 || reply[1] != opOACK {
			t.Fatalf("reply %q, want OACK", reply)
		}
		// exchange cannot tell the source port; a full fetch through a relay
		// that forwards only to the listening port can.
		relay := startRelay(t, ts.addr, impairment{seed: 1})
		res, err := tftpGet(relay.addr(), "f", clientOptions{blksize: 1024, windowsize: 2})
		if err != nil {
			t.Fatal(err)
		}
		assertSame(t, res.data, want)
		relay.mu.Lock()
		from := relay.transfer
		relay.mu.Unlock()
		if from != ts.addr {
			t.Fatalf("%s: transfer answered from %v, want the listening address %v", listen, from, ts.addr)
		}
	}
}

func TestSinglePortConcurrentTransfers(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "--single-port")
	files := map[string][]byte{}
	for i := range 8 {
		name := fmt.Sprintf("f%d", i)
		files[name] = ts.writeFile(t, name, 50_000+i*1000)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(files))
	for name, want := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := tftpGet(ts.addr, name, clientOptions{blksize: 1024, windowsize: 8})
			if err == nil && string(res.data) != string(want) {
				err = fmt.Errorf("%s: received bytes differ", name)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestSinglePortUnderLoss(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "--single-port", "-t", "0.03", "--retries", "40")
	want := ts.writeFile(t, "f", 60_000)
	for _, window := range []int{1, 16} {
		relay := startRelay(t, ts.addr, impairment{loss: 0.10, duplicate: 0.01, reorder: 0.01, seed: 7})
		res, err := tftpGet(relay.addr(), "f", clientOptions{windowsize: window, retry: 30 * time.Millisecond, maxRetries: 200})
		if err != nil {
			t.Fatal(err)
		}
		assertSame(t, res.data, want)
	}
}

func TestSinglePortShutdownDrains(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "--single-port")
	want := ts.writeFile(t, "f", 64*512)
	done := make(chan error, 1)
	started := make(chan struct{})
	var got []byte
	go func() {
		res, err := tftpGet(ts.addr, "f", clientOptions{ackDelay: 3 * time.Millisecond, firstData: started})
		if err == nil {
			got = res.data
		}
		done <- err
	}()
	<-started
	ts.shutdown(5 * time.Second)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	assertSame(t, got, want)
}
