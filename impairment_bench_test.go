// Benchmarks on conditions loopback does not have: loss recovery through
// the impairment relay against atftpd as the reference, a boot storm of 200
// clients at once, and the resident memory a router would see, with the
// static builds and 32-bit pointers.
package main

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// lossCellLimit bounds one fetch in BenchmarkLossRecovery; a slower one is
// reported as failed (atftpd needs minutes at 5% loss).
const lossCellLimit = 20 * time.Second

// startAtftpd runs Debian's atftpd on a free loopback port, for comparison.
func startAtftpd(b *testing.B, root string) netip.AddrPort {
	bin, err := exec.LookPath("atftpd")
	if err != nil {
		b.Skip("atftpd is not installed")
	}
	probe, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	addr := probe.LocalAddr().(*net.UDPAddr).AddrPort()
	probe.Close()
	cmd := exec.Command(bin, "--daemon", "--no-fork", "--port", strconv.Itoa(int(addr.Port())),
		"--bind-address", "127.0.0.1", "--user", "root.root", "--logfile", "/dev/null", root)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	time.Sleep(300 * time.Millisecond)
	return addr
}

// BenchmarkLossRecovery fetches files through the seeded impairment relay
// (loss in both directions plus 1% duplicated and 1% delayed 2 ms) from
// r-tftpd and from atftpd, with the test client and with atftp, blksize 512.
// Each op is one fetch; s/op is the time a transfer took.
func BenchmarkLossRecovery(b *testing.B) {
	// The default --timeout: it sets how long a silent client is waited
	// for, and atftp falls silent for its own 5 s timer.
	ts := startServer(b, "127.0.0.1", "-t", "3", "--log-level", "warn")
	files := map[string][]byte{
		"300K": ts.writeFile(b, "300K", 300_000),
		"10M":  ts.writeFile(b, "10M", 10_000_000),
	}
	atftpd := startAtftpd(b, ts.root)
	servers := []struct {
		name string
		addr netip.AddrPort
	}{{"r-tftpd", ts.addr}, {"atftpd", atftpd}}
	for _, srv := range servers {
		for _, client := range []string{"test", "atftp", "curl", "tftp-hpa", "busybox"} {
			for _, size := range []string{"300K", "10M"} {
				for _, loss := range []int{0, 1, 5, 20} {
					for _, window := range []int{1, 8, 16, 64} {
						name := fmt.Sprintf("server=%s/client=%s/size=%s/loss=%d/window=%d", srv.name, client, size, loss, window)
						b.Run(name, func(b *testing.B) {
							if srv.name == "atftpd" && size == "10M" && loss > 0 {
								b.Skip("atftpd takes minutes per lossy 10 MB transfer")
							}
							if window > 1 && client != "test" && client != "atftp" {
								b.Skip("only the test client and atftp ask for windowsize")
							}
							var took []float64 // seconds per fetch, one seed each
							// A fetch that fails (the client gives up, or its
							// cap ran out) is counted and logged, and the other
							// seeds still run: a table needs every one. Wrong
							// bytes end the benchmark.
							failed := 0
							defer func() {
								b.ReportMetric(median(took), "median-s")
								b.ReportMetric(float64(failed), "failed")
							}()
							for i := range b.N {
								relay := startRelay(b, srv.addr, impairment{loss: float64(loss) / 100, duplicate: 0.01, delay: 0.01, seed: int64(i + 1)})
								start := time.Now()
								got, err := fetchThrough(b, client, relay.addr(), size, window)
								took = append(took, time.Since(start).Seconds())
								b.Logf("seed %d: %.3f s", i+1, took[len(took)-1])
								if err != nil {
									if srv.name == "r-tftpd" {
										ts.result(b) // the abandoned session's report, not the next seed's
									}
									failed++
									b.Logf("seed %d failed: %v (after %v)", i+1, err, time.Since(start).Round(time.Millisecond))
									continue
								}
								if string(got) != string(files[size]) {
									b.Fatal("received bytes differ from the source")
								}
								if srv.name == "r-tftpd" {
									r := <-ts.results
									b.ReportMetric(float64(r.stats.retransmits)/float64(max(1, relay.dropped.Load())), "resends/drop")
									b.ReportMetric(float64(r.stats.timeouts), "timeouts")
									b.ReportMetric(float64(relay.dropped.Load()), "drops")
								}
							}
						})
					}
				}
			}
		}
	}
}

// median is the middle of xs (the mean of the two middle ones for an even
// count), or 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	sorted := slices.Clone(xs)
	slices.Sort(sorted)
	mid := len(sorted) / 2
	if len(sorted)%2 == 0 {
		return (sorted[mid-1] + sorted[mid]) / 2
	}
	return sorted[mid]
}

func fetchThrough(b *testing.B, client string, addr netip.AddrPort, name string, window int) ([]byte, error) {
	if client == "test" {
		res, err := tftpGet(addr, name, clientOptions{windowsize: window, retry: 50 * time.Millisecond, maxRetries: int(lossCellLimit / (50 * time.Millisecond)), giveUpAfter: lossCellLimit})
		if err != nil {
			return nil, err
		}
		return res.data, nil
	}
	local := filepath.Join(b.TempDir(), "out")
	host, port := addr.Addr().String(), strconv.Itoa(int(addr.Port()))
	// The real clients as the interop tests run them; atftp always asks
	// for the window.
	c := map[string]interopCase{
		"atftp":    {client: "atftp", args: atftpArgs(opRRQ, "windowsize "+strconv.Itoa(window))},
		"curl":     {client: "curl", args: curlArgs(opRRQ)},
		"tftp-hpa": {client: "tftp", args: tftpHPAArgs(opRRQ, false)},
		"busybox":  {client: "busybox", args: busyboxArgs(opRRQ, 1468)},
	}[client]
	cmd := exec.Command(c.client, c.args(host, port, name, local)...)
	var output strings.Builder
	cmd.Stdout, cmd.Stderr = &output, &output
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return nil, fmt.Errorf("%s: %v: %s", client, err, strings.TrimSpace(output.String()))
		}
	case <-time.After(lossCellLimit):
		cmd.Process.Kill()
		<-done
		out := output.String()
		return nil, fmt.Errorf("%s: no result within %v; its output ends: %s", client, lossCellLimit, out[max(0, len(out)-2000):])
	}
	return os.ReadFile(local)
}

// BenchmarkBootStorm starts the server binary and lets 200 clients fetch a
// 10 MB file at once (blksize 1468, windowsize 16), after one client alone
// in the same run. It reports the aggregate rate, the single-stream rate
// and the server's peak RSS.
func BenchmarkBootStorm(b *testing.B) {
	const clients, size = 200, 10_000_000
	root := b.TempDir()
	want := make([]byte, size)
	for i := range want {
		want[i] = byte(i * 7 >> 3)
	}
	os.WriteFile(filepath.Join(root, "boot.img"), want, 0o644)
	cmd := exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", root, "-m", "256")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := waitListening(b, stderr)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if err := stormFetch(b, addr, want, 1); err != nil {
			b.Fatal(err)
		}
		single := time.Since(start)
		start = time.Now()
		if err := stormFetch(b, addr, want, clients); err != nil {
			b.Fatal(err)
		}
		storm := time.Since(start)
		b.ReportMetric(float64(size)/single.Seconds()/1e6, "single-MB/s")
		b.ReportMetric(float64(clients*size)/storm.Seconds()/1e6, "storm-MB/s")
		b.ReportMetric(storm.Seconds(), "storm-s")
		b.ReportMetric(float64(clients)*single.Seconds(), "serial-s")
	}
	b.ReportMetric(float64(procStatusKiB(b, cmd.Process.Pid, "VmHWM"))/1024, "peak-RSS-MiB")
}

// BenchmarkRouterMemory measures what a router would see: the server's
// resident memory idle, and its peak while 64 clients (the default -m) fetch
// a 10 MB file at once, blksize 1468 and windowsize 16. It runs the stripped
// static builds with and without proxy support, native and GOARCH=386, whose
// 32-bit pointers are those of the MIPS and ARM routers, with the default
// memory limit.
func BenchmarkRouterMemory(b *testing.B) {
	const clients, size = 64, 10_000_000
	root := b.TempDir()
	want := randomBytes(size, 80)
	os.WriteFile(filepath.Join(root, "boot.img"), want, 0o644)
	for _, arch := range []string{runtime.GOARCH, "386"} {
		for _, flavour := range []string{"proxy", "noproxy"} {
			b.Run("arch="+arch+"/build="+flavour, func(b *testing.B) {
				bin := filepath.Join(b.TempDir(), "r-tftpd")
				build := exec.Command("go", "build", "-tags", strings.TrimPrefix(flavour, "proxy"), "-trimpath", "-ldflags", "-s -w", "-o", bin, ".")
				build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOARCH="+arch)
				if out, err := build.CombinedOutput(); err != nil {
					b.Fatalf("go build: %v\n%s", err, out)
				}
				cmd := exec.Command(bin, "-l", "127.0.0.1", "-p", "0", "-r", root)
				stderr, _ := cmd.StderrPipe()
				if err := cmd.Start(); err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
				addr := waitListening(b, stderr)
				time.Sleep(200 * time.Millisecond)
				idle := procStatusKiB(b, cmd.Process.Pid, "VmRSS")
				b.ResetTimer()
				for range b.N {
					if err := stormFetch(b, addr, want, clients); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(idle)/1024, "idle-RSS-MiB")
				b.ReportMetric(float64(procStatusKiB(b, cmd.Process.Pid, "VmHWM"))/1024, "peak-RSS-MiB")
			})
		}
	}
}

func waitListening(b *testing.B, stderr interface{ Read([]byte) (int, error) }) netip.AddrPort {
	lines := bufio.NewScanner(stderr)
	for lines.Scan() {
		if m := listeningRE.FindStringSubmatch(lines.Text()); m != nil {
			go func() {
				for lines.Scan() {
				}
			}()
			return netip.MustParseAddrPort(m[1])
		}
	}
	b.Fatal("server exited without listening")
	return netip.AddrPort{}
}

func stormFetch(b *testing.B, addr netip.AddrPort, want []byte, clients int) error {
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		c := newBenchClient(b, addr, "boot.img", 1468, 16)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, _, err := c.get(addr, want); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// procStatusKiB reads a memory figure (VmRSS, VmHWM) from /proc, in KiB.
func procStatusKiB(b *testing.B, pid int, field string) int {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field+":" {
			kb, _ := strconv.Atoi(f[1])
			return kb
		}
	}
	b.Fatalf("no %s in /proc status", field)
	return 0
}
