// The metrics as an operator sees them: scraped with curl from the server
// binary during and after real transfers (curl, atftp, an upload, a refused
// request, a malformed one, a UEFI-style tsize probe that aborts), checked
// by value and by Debian's promtool; the scrape endpoint's answers and its
// limits; the request-head parser, fuzzed.
package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// metricsAddrRE finds the address in the "metrics listening" log line.
var metricsAddrRE = regexp.MustCompile(`msg="metrics listening" addr=(\S+)`)

// metricsAddr is where a server binary started with --metrics answers.
func metricsAddr(t *testing.T, srv *runningBinary) string {
	t.Helper()
	return metricsAddrRE.FindStringSubmatch(srv.awaitLog(t, `msg="metrics listening"`))[1]
}

// scrape fetches http://addr/path with curl and returns the status code,
// the Content-Type and the body.
func scrape(t *testing.T, addr, path string) (code int, contentType, body string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := filepath.Join(t.TempDir(), "body")
	meta, err := exec.CommandContext(ctx, needClient(t, "curl"), "-sS", "-o", out, "-w", "%{http_code} %{content_type}",
		"http://"+addr+path).Output()
	if err != nil {
		t.Fatalf("curl http://%s%s: %v", addr, path, err)
	}
	codeText, contentType, _ := strings.Cut(string(meta), " ")
	code, _ = strconv.Atoi(codeText)
	return code, contentType, string(readFile(t, out))
}

// scrapeMetrics is GET /metrics, which must answer 200 in format 0.0.4 and
// pass promtool's checks.
func scrapeMetrics(t *testing.T, addr string) string {
	t.Helper()
	code, contentType, body := scrape(t, addr, "/metrics")
	if code != 200 || contentType != "text/plain; version=0.0.4; charset=utf-8" {
		t.Fatalf("GET /metrics: %d %q, want 200 and text format 0.0.4", code, contentType)
	}
	promtoolCheck(t, body)
	return body
}

// promtoolCheck runs Debian's `promtool check metrics` (package
// prometheus) on an exposition: it must exit 0 and find nothing to say.
func promtoolCheck(t *testing.T, text string) {
	t.Helper()
	cmd := exec.Command(needClient(t, "promtool"), "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("promtool check metrics: %v\n%s\non:\n%s", err, out, text)
	}
}

// sampleValue is the value of one series, named as the exposition writes
// it (labels in order); it fails the test when the series is missing.
func sampleValue(t *testing.T, text, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				t.Fatalf("%s: value %q", series, rest)
			}
			return v
		}
	}
	t.Fatalf("no series %s in:\n%s", series, text)
	return 0
}

// expectSamples checks each series' value.
func expectSamples(t *testing.T, text string, want map[string]float64) {
	t.Helper()
	for series, v := range want {
		if got := sampleValue(t, text, series); got != v {
			t.Errorf("%s = %v, want %v", series, got, v)
		}
	}
}

// loggedCount is the number after key= in a summary line.
func loggedCount(t *testing.T, line, key string) float64 {
	t.Helper()
	m := regexp.MustCompile(` ` + key + `=(\d+)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no %s= in %q", key, line)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// TestMetricsCountRealTransfers: every counter moves as the transfers did,
// read while one runs and after each has ended, in an exposition promtool
// accepts.
func TestMetricsCountRealTransfers(t *testing.T) {
	root, uploads := t.TempDir(), t.TempDir()
	image, kernel := randomBytes(100_000, 80), randomBytes(3000, 81)
	os.WriteFile(filepath.Join(root, "boot.img"), image, 0o644)
	os.WriteFile(filepath.Join(root, "kernel"), kernel, 0o644)
	config := filepath.Join(t.TempDir(), "switch.cfg")
	os.WriteFile(config, randomBytes(2000, 82), 0o644)
	srv := startBinary(t, exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", root,
		"--upload-dir", uploads, "--metrics", "127.0.0.1:0"))
	addr := metricsAddr(t, srv)
	version, _ := exec.Command(serverBinary, "-V").Output()
	host, port := srv.addr.Addr().String(), strconv.Itoa(int(srv.addr.Port()))

	zero := scrapeMetrics(t, addr)
	expectSamples(t, zero, map[string]float64{
		`tftpd_transfers_total{op="read",outcome="complete"}`: 0,
		`tftpd_transfers_active{op="read"}`:                   0,
		`tftpd_cache_requests_total{result="miss"}`:           0,
		`tftpd_cache_bytes`:                                   0,
		`tftpd_build_info{version="` + strings.TrimSpace(strings.TrimPrefix(string(version), "r-tftpd ")) + `",build="proxy"}`: 1,
	})

	// While a lockstep transfer holds after three blocks, it is active and
	// its bytes so far count: the server stored them with block 3, or
	// with block 4, which our ACK let go.
	l := startLockstep(t, srv.addr, "boot.img")
	for range 3 {
		if _, err := l.block(5 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	during := scrapeMetrics(t, addr)
	expectSamples(t, during, map[string]float64{`tftpd_transfers_active{op="read"}`: 1, `tftpd_transfers_active{op="write"}`: 0})
	if b := sampleValue(t, during, `tftpd_bytes_total{op="read"}`); b != 3*512 && b != 4*512 {
		t.Errorf("bytes during the transfer: %v, want 1536 or 2048", b)
	}
	got, err := l.rest(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, got, image)
	var retransmits, timeouts float64
	summary := func(msg string) {
		line := srv.awaitLog(t, msg)
		retransmits += loggedCount(t, line, "retransmits")
		timeouts += loggedCount(t, line, "timeouts")
	}
	summary(`msg="transfer complete"`)

	assertSame(t, fetchWithClient(t, interopCase{client: "curl", name: "curl", args: curlArgs(opRRQ)}, host, port, "kernel"), kernel)
	summary(`msg="transfer complete"`)
	atftp := interopCase{client: "atftp", name: "atftp", args: atftpArgs(opRRQ, "blksize 1468")}
	assertSame(t, fetchWithClient(t, atftp, host, port, "boot.img"), image)
	summary(`msg="transfer complete"`)
	runClient(t, interopCase{client: "atftp", name: "atftp put", args: atftpArgs(opWRQ)}, host, port, "switch.cfg", config)
	summary(`msg="transfer complete"`)
	assertSame(t, readFile(t, filepath.Join(uploads, "switch.cfg")), readFile(t, config))

	if _, err := tftpGet(srv.addr, "missing", clientOptions{}); err == nil {
		t.Fatal("a missing file was served")
	}
	srv.awaitLog(t, `msg="transfer failed"`)
	if reply := exchange(t, srv.addr, []byte{0, opRRQ, 'x'}, 5*time.Second); reply == nil || reply[1] != opERROR {
		t.Fatalf("malformed request: reply %q, want ERROR", reply)
	}
	srv.awaitLog(t, `msg="bad request"`)
	// UEFI's size probe: tsize, the OACK, then ERROR 8.
	probe := newScriptedPeer(t, srv.addr, rrq("boot.img", "octet", "tsize", "0", "blksize", "1468"))
	if oack := probe.next(5 * time.Second); oack == nil || oack[1] != opOACK || parseOACK(oack)["tsize"] != "100000" {
		t.Fatalf("tsize probe: %q, want an OACK with tsize 100000", oack)
	}
	probe.abort()
	srv.awaitLog(t, `msg="transfer ended by the client"`)

	after := scrapeMetrics(t, addr)
	expectSamples(t, after, map[string]float64{
		`tftpd_transfers_total{op="read",outcome="complete"}`:         3,
		`tftpd_transfers_total{op="read",outcome="failed"}`:           0,
		`tftpd_transfers_total{op="read",outcome="aborted"}`:          1,
		`tftpd_transfers_total{op="read",outcome="refused"}`:          1,
		`tftpd_transfers_total{op="write",outcome="complete"}`:        1,
		`tftpd_transfers_total{op="write",outcome="refused"}`:         0,
		`tftpd_bytes_total{op="read"}`:                                2*100_000 + 3000,
		`tftpd_bytes_total{op="write"}`:                               2000,
		`tftpd_transfers_active{op="read"}`:                           0,
		`tftpd_transfers_active{op="write"}`:                          0,
		`tftpd_retransmits_total`:                                     retransmits,
		`tftpd_timeouts_total`:                                        timeouts,
		`tftpd_requests_refused_total{reason="not_found"}`:            1,
		`tftpd_requests_refused_total{reason="malformed"}`:            1,
		`tftpd_requests_refused_total{reason="busy"}`:                 0,
		`tftpd_transfer_duration_seconds_count{op="read"}`:            4,
		`tftpd_transfer_duration_seconds_count{op="write"}`:           1,
		`tftpd_transfer_duration_seconds_bucket{op="read",le="+Inf"}`: 4,
		`tftpd_map_file_reloads_total{result="ok"}`:                   0,
		`tftpd_cache_requests_total{result="hit"}`:                    0,
	})
	if sum := sampleValue(t, after, `tftpd_transfer_duration_seconds_sum{op="read"}`); sum <= 0 || sum > 60 {
		t.Errorf("read durations sum to %v s", sum)
	}
	for _, forbidden := range []string{"boot.img", "kernel", "switch.cfg", "missing", "127.0.0.1"} {
		if strings.Contains(after, forbidden) {
			t.Errorf("the exposition names %q: labels carry no file name or address", forbidden)
		}
	}
}

// TestMetricsEndpoint: a fifth connection while four stalled scrapers hold
// theirs is closed at once, and the four are cut off by the deadline; only
// GET /metrics is answered with the metrics, another path is 404, a
// malformed request 400, a huge one 431.
func TestMetricsEndpoint(t *testing.T) {
	srv := startBinary(t, exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", t.TempDir(), "--metrics", "127.0.0.1:0"))
	addr := metricsAddr(t, srv)
	var idle []net.Conn
	for range maxScrapers {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("GET /metr")) // and no more
		idle = append(idle, c)
	}
	// The listener has taken the four once a fifth is refused; it may
	// take a moment to accept them, so the fifth is tried a few times.
	turnedAway := false
	for try := 0; try < 50 && !turnedAway; try++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(scrapeDeadline / 2))
		c.Write([]byte("GET /metrics HTTP/1.1\r\n\r\n"))
		b, err := io.ReadAll(c)
		c.Close()
		// Closed unanswered: a FIN, or a reset when the request had
		// arrived before the close (a busy machine accepts late).
		turnedAway = len(b) == 0 && (err == nil || errors.Is(err, syscall.ECONNRESET))
	}
	if !turnedAway {
		t.Fatal("a fifth scraper was answered while four held their connections")
	}
	start := time.Now()
	for _, c := range idle {
		c.SetDeadline(time.Now().Add(2 * scrapeDeadline))
		if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
			t.Fatalf("a stalled scraper got %q, %v; want its connection closed", b, err)
		}
	}
	if waited := time.Since(start); waited > scrapeDeadline+time.Second {
		t.Fatalf("stalled scrapers were cut off after %v, want within %v", waited, scrapeDeadline)
	}
	for _, path := range []string{"/", "/metrics/x", "/metricsx"} {
		if code, _, body := scrape(t, addr, path); code != 404 || body != "404 Not Found\n" {
			t.Errorf("GET %s: %d %q, want 404", path, code, body)
		}
	}
	if code, _, body := scrape(t, addr, "/metrics?name[]=tftpd_bytes_total"); code != 200 || !strings.Contains(body, "tftpd_build_info") {
		t.Errorf("GET /metrics with a query: %d, want 200 and the metrics", code)
	}
	raw := func(request string) []byte {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte(request))
		b, _ := io.ReadAll(c)
		return b
	}
	if b := raw("POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n"); !bytes.HasPrefix(b, []byte("HTTP/1.1 404 ")) {
		t.Errorf("POST /metrics: %q, want 404", b)
	}
	if b := raw("GET /metrics\r\n\r\n"); !bytes.HasPrefix(b, []byte("HTTP/1.1 400 ")) {
		t.Errorf("HTTP/0.9 request: %q, want 400", b)
	}
	if b := raw("GET /metrics HTTP/1.1\r\nX: " + strings.Repeat("a", maxScrapeHead) + "\r\n\r\n"); !bytes.HasPrefix(b, []byte("HTTP/1.1 431 ")) {
		t.Errorf("huge head: %.40q, want 431", b)
	}

}

// TestParseScrapeRequest: what each request head is answered with.
func TestParseScrapeRequest(t *testing.T) {
	for head, want := range map[string]int{
		"":                                     0,
		"GET /metrics HTTP/1.1\r\n":            0,
		"GET /metrics HTTP/1.1\r\nHost: a\r\n": 0,
		"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n":                          200,
		"GET /metrics HTTP/1.0\n\n":                                         200,
		"GET /metrics?x=1 HTTP/1.1\r\n\r\n":                                 200,
		"GET /other HTTP/1.1\r\n\r\n":                                       404,
		"HEAD /metrics HTTP/1.1\r\n\r\n":                                    404,
		"GET * HTTP/1.1\r\n\r\n":                                            404,
		"GET /metrics HTTP/2.0\r\n\r\n":                                     400,
		"GET /metrics\r\n":                                                  400,
		"GET  /metrics HTTP/1.1\r\n\r\n":                                    400,
		"G(T /metrics HTTP/1.1\r\n\r\n":                                     400,
		"GET metrics HTTP/1.1\r\n\r\n":                                      400,
		"GET /m\x7fetrics HTTP/1.1\r\n\r\n":                                 400,
		"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\n":                        400, // TLS
		"GET /metrics HTTP/1.1\r\nX: " + strings.Repeat("a", maxScrapeHead): 431,
	} {
		if got := parseScrapeRequest([]byte(head)); got != want {
			t.Errorf("%.60q: %d, want %d", head, got, want)
		}
	}
}

// FuzzParseScrapeRequest: any bytes get a decision without a panic, only
// a complete head is answered 200, and the answer to a complete head does
// not change with what follows it.
func FuzzParseScrapeRequest(f *testing.F) {
	f.Add([]byte("GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"))
	f.Fuzz(func(t *testing.T, head []byte) {
		got := parseScrapeRequest(head)
		switch got {
		case 0, 200, 400, 404, 431:
		default:
			t.Fatalf("%q: status %d", head, got)
		}
		if got == 200 && !bytes.Contains(head, []byte("\n\n")) && !bytes.Contains(head, []byte("\n\r\n")) {
			t.Fatalf("%q: 200 before the head ended", head)
		}
		if got == 200 || got == 404 {
			if again := parseScrapeRequest(append(bytes.Clone(head), "\r\n\r\nmore"...)); again != got {
				t.Fatalf("%q: %d, then %d with more bytes after it", head, got, again)
			}
		}
	})
}

// TestMetricsCountRefusalsByReason: a request over the limit is refused as
// busy and one with nowhere to go for access, each under its op.
func TestMetricsCountRefusalsByReason(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "-m", "1")
	want := ts.writeFile(t, "f", 5000)
	l := startLockstep(t, ts.addr, "f")
	if _, err := l.block(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	_, err := tftpGet(ts.addr, "f", clientOptions{})
	wantWireError(t, err, codeUndefined)
	got, err := l.rest(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, got, want)
	ts.result(t)
	_, err = tftpPut(ts.addr, "up", want, clientOptions{})
	wantWireError(t, err, codeAccess)
	ts.result(t)
	text := string(ts.metrics.appendText(nil))
	promtoolCheck(t, text)
	expectSamples(t, text, map[string]float64{
		`tftpd_requests_refused_total{reason="busy"}`:          1,
		`tftpd_requests_refused_total{reason="access"}`:        1,
		`tftpd_transfers_total{op="read",outcome="refused"}`:   1,
		`tftpd_transfers_total{op="read",outcome="complete"}`:  1,
		`tftpd_transfers_total{op="write",outcome="refused"}`:  1,
		`tftpd_transfers_total{op="write",outcome="complete"}`: 0,
		`tftpd_transfers_active{op="read"}`:                    0,
		`tftpd_transfers_active{op="write"}`:                   0,
	})
}
