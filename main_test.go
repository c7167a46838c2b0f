// The command line and the process: bad flags are one-line errors that name
// the option, --version and --help, systemd socket activation and
// readiness, SIGTERM draining running transfers, the noproxy build without
// an HTTP client, the default memory limit, and byte sizes as flags take
// them.
package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestBadFlagsAreOneLineErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-t", "-1"}, {"--timeout", "NaN"}, {"-t", "0"}, {"-t", "300"},
		{"-L", "fancy"}, {"--log-level", "loud"},
		{"-p", "70000"}, {"--port", "-1"}, {"-p", "x"},
		{"-m", "0"}, {"--retries", "0"},
		{"--max-blksize", "7"}, {"--max-windowsize", "0"}, {"--max-window-bytes", "0"},
		{"--cache-max-size", "lots"}, {"-C", "/nonexistent"}, {"--fallback", "ftp://h/"}, {"-f", "/nonexistent"},
		{"-l", "not-an-ip"}, {"-l", "127.0.0.1", "--listen", "::1", "-l", "nope"}, {"-r", "/nonexistent/dir"},
		{"--upload-dir", "/nonexistent"}, {"--upload-max-size", "huge"}, {"--upload-mode", "999"},
		{"--upload-mode", "rw"}, {"--upload-dir", ".", "--wrq-devnull"},
		{"--port-range", "1000"}, {"--port-range", "5000:4000"}, {"--port-range", "0:10"},
		{"--port-range", "1:65536"}, {"--port-range", "a:b"}, {"--port-range", "100:200", "--single-port"},
		{"--interface", "no-such-if0"}, {"--interface", "lo", "--systemd"},
		{"--refuse", "blksize3"}, {"--refuse", ""},
		{"--metrics", "9169"}, {"--metrics", "[::1"}, {"--metrics", "localhost:9169"}, {"--hook", "/nonexistent/hook"}, {"--hook", "no-such-hook-program"},
		{"--hook", " "}, {"--hook", "/etc/passwd"}, {"--hook-max", "0"}, {"--hook-max", "257"}, {"--hook-timeout", "0"}, {"--hook-timeout", "Inf"},
		{"--bogus"}, {"stray-argument"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
		if lines := strings.Count(stderr.String(), "\n"); lines != 1 || !strings.HasPrefix(stderr.String(), "r-tftpd: ") {
			t.Errorf("%q: stderr %q, want one line starting with r-tftpd:", args, stderr.String())
		}
	}
}

// TestFlagErrorsNameTheOption: the option is named as the user typed it.
func TestFlagErrorsNameTheOption(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "r-tftpd: unknown option --bogus (see --help)\n"},
		{[]string{"-Z"}, "r-tftpd: unknown option -Z (see --help)\n"},
		{[]string{"--port"}, "r-tftpd: option --port needs a value (see --help)\n"},
		{[]string{"-v", "-p"}, "r-tftpd: unknown option -v (see --help)\n"},
		{[]string{"-p"}, "r-tftpd: option -p needs a value (see --help)\n"},
		{[]string{"--map-file"}, "r-tftpd: option --map-file needs a value (see --help)\n"},
		{[]string{"--port=x"}, "r-tftpd: option --port: invalid value \"x\" (see --help)\n"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(c.args, &stdout, &stderr); code != 2 || stderr.String() != c.want {
			t.Errorf("%q: exit %d, %q; want 2, %q", c.args, code, stderr.String(), c.want)
		}
	}
}

func TestVersionAndHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-V"}, &stdout, &stderr); code != 0 || stdout.String() != "r-tftpd "+version+"\n" {
		t.Fatalf("-V: exit %d, %q", code, stdout.String())
	}
	stdout.Reset()
	if code := run([]string{"--help"}, &stdout, &stderr); code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	for _, flag := range []string{"--systemd", "--port", "--listen", "--max-connections", "--timeout", "--fallback",
		"--log-format", "--cache-dir", "--no-rfc2347", "--wrq-devnull", "--disable-proxy", "--version", "--root", "--map-file",
		"--upload-dir", "--upload-overwrite", "--upload-mode", "--upload-max-size", "--upload-http", "--max-per-client",
		"--metrics", "--hook", "--hook-max", "--hook-timeout"} {
		if !strings.Contains(stdout.String(), flag) {
			t.Errorf("--help does not mention %s", flag)
		}
	}
}

func TestSocketActivationAndNotify(t *testing.T) {
	root := t.TempDir()
	want := []byte(strings.Repeat("socket activation\n", 1000))
	os.WriteFile(filepath.Join(root, "boot.img"), want, 0o644)

	srv, addr, notify := startActivated(t, "-r", root)
	expectNotify(t, notify, "READY=1")

	res, err := tftpGet(addr, "boot.img", clientOptions{blksize: 1468, tsize: true})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)

	srv.cmd.Process.Signal(syscall.SIGTERM)
	expectNotify(t, notify, "STOPPING=1")
	if err := srv.wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

// startActivated runs the server binary with --systemd as systemd starts
// it: on a UDP socket the test opened (LISTEN_FDS), with NOTIFY_SOCKET a
// datagram socket the test listens on. It returns the server, the
// socket's address and the notifications' socket.
func startActivated(t *testing.T, args ...string) (*runningBinary, netip.AddrPort, *net.UnixConn) {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	sock, err := conn.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sock.Close() })
	notifyPath := filepath.Join(t.TempDir(), "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { notify.Close() })
	// LISTEN_PID must be the server's own pid, which only the child knows:
	// the shell sets it to its own pid and exec keeps it.
	cmd := exec.Command("sh", append([]string{"-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`, serverBinary, "--systemd"}, args...)...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath)
	cmd.ExtraFiles = []*os.File{sock}
	return startBinary(t, cmd), conn.LocalAddr().(*net.UDPAddr).AddrPort(), notify
}

// expectNotify waits for the next state the server notifies, passing over
// the STATUS= lines it sends in between (TestStatusLine checks those).
func expectNotify(t *testing.T, notify *net.UnixConn, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	notify.SetReadDeadline(deadline)
	buf := make([]byte, 256)
	for time.Now().Before(deadline) {
		n, err := notify.Read(buf)
		if err == nil && strings.HasPrefix(string(buf[:n]), "STATUS=") {
			continue
		}
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("notify: %q, %v; want %q", buf[:n], err, want)
		}
		return
	}
	t.Fatalf("notify: no %q within 5 s", want)
}

func TestSystemdWithoutSocketFails(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, serverBinary, "--systemd", "-r", t.TempDir())
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "no socket passed") {
		t.Fatalf("exit %v, output %q; want status 1 and a clear error", err, out)
	}
}

func TestSIGTERMDrainsRunningTransfers(t *testing.T) {
	root := t.TempDir()
	want := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 128 blocks of 512
	os.WriteFile(filepath.Join(root, "f"), want, 0o644)
	cmd := exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", root)
	srv := startBinary(t, cmd)
	type fetched struct {
		res *clientResult
		err error
	}
	done := make(chan fetched, 1)
	started := make(chan struct{})
	go func() {
		// About 0.6 s: 128 ACKs, each after 5 ms.
		res, err := tftpGet(srv.addr, "f", clientOptions{ackDelay: 5 * time.Millisecond, firstData: started})
		done <- fetched{res, err}
	}()
	<-started
	cmd.Process.Signal(syscall.SIGTERM)
	f := <-done
	if f.err != nil {
		t.Fatal(f.err)
	}
	assertSame(t, f.res.data, want)
	if err := srv.wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

// TestNoProxyBuild: built with -tags noproxy the server has no HTTP client
// at all, says so in --help, still serves local files and its metrics, and
// answers a name below a URL link or a URL fallback with a clear ERROR.
func TestNoProxyBuild(t *testing.T) {
	deps, err := exec.Command("go", "list", "-deps", "-tags", "noproxy", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, pkg := range strings.Fields(string(deps)) {
		if pkg == "net/http" || pkg == "crypto/tls" {
			t.Fatalf("the noproxy build still imports %s", pkg)
		}
	}
	bin := filepath.Join(t.TempDir(), "r-tftpd-noproxy")
	if out, err := exec.Command("go", "build", "-tags", "noproxy", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build -tags noproxy: %v\n%s", err, out)
	}
	help, err := exec.Command(bin, "--help").Output()
	if err != nil || !strings.Contains(string(help), "no proxy support") {
		t.Fatalf("--help (%v) does not say the build has no proxy:\n%s", err, help)
	}
	root := t.TempDir()
	want := randomBytes(3000, 60)
	if err := os.WriteFile(filepath.Join(root, "local"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("http://127.0.0.1:1/", filepath.Join(root, "web")); err != nil {
		t.Fatal(err)
	}
	srv := startBinary(t, exec.Command(bin, "-l", "127.0.0.1", "-p", "0", "-r", root, "--fallback", "http://127.0.0.1:1/", "--upload-http",
		"--metrics", "127.0.0.1:0"))
	srv.awaitLog(t, "no proxy support")
	metrics := metricsAddr(t, srv)
	res, err := tftpGet(srv.addr, "local", clientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
	srv.awaitLog(t, `msg="transfer complete"`)
	// The same responder serves the metrics without net/http; the
	// proxy's series are left out.
	text := scrapeMetrics(t, metrics)
	expectSamples(t, text, map[string]float64{
		`tftpd_transfers_total{op="read",outcome="complete"}`: 1,
		`tftpd_bytes_total{op="read"}`:                        3000,
		`tftpd_build_info{version="dev",build="noproxy"}`:     1,
	})
	if strings.Contains(text, "tftpd_cache_") || strings.Contains(text, "tftpd_origin_") {
		t.Fatalf("the noproxy build shows the proxy's series:\n%s", text)
	}
	for _, name := range []string{"web/file", "missing"} {
		_, err := tftpGet(srv.addr, name, clientOptions{})
		var we *wireError
		if !errors.As(err, &we) || we.code != codeNotFound || !strings.Contains(we.msg, "without proxy support") {
			t.Fatalf("%s: %v, want ERROR 1 saying the build has no proxy support", name, err)
		}
		// An upload relayed to a URL is refused likewise, as ERROR 2.
		_, err = tftpPut(srv.addr, name, want, clientOptions{})
		if !errors.As(err, &we) || we.code != codeAccess || !strings.Contains(we.msg, "without proxy support") {
			t.Fatalf("upload %s: %v, want ERROR 2 saying the build has no proxy support", name, err)
		}
	}
}

// TestDefaultMemoryLimit: without GOMEMLIMIT the server gives the garbage
// collector a ceiling of a quarter of the RAM within [16 MiB, 256 MiB];
// GOMEMLIMIT, when set, is left to the runtime.
func TestDefaultMemoryLimit(t *testing.T) {
	const mib = 1 << 20
	for ram, want := range map[uint64]int64{
		0: 16 * mib, 32 * mib: 16 * mib, 64 * mib: 16 * mib, 128 * mib: 32 * mib,
		512 * mib: 128 * mib, 1024 * mib: 256 * mib, 64 << 30: 256 * mib,
	} {
		if got := memoryLimitFor(ram); got != want {
			t.Errorf("limit for %d MiB of RAM: %d MiB, want %d MiB", ram/mib, got/mib, want/mib)
		}
	}
	// This machine's RAM, from /proc/meminfo rather than sysinfo(2).
	meminfo, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	var totalKiB int64
	for _, line := range strings.Split(string(meminfo), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			totalKiB, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	limit := min(max(totalKiB*1024/4, 16*mib), 256*mib)
	if got, ok := defaultMemoryLimit(); !ok || got != limit {
		t.Fatalf("default limit %d (%v), want %d: a quarter of MemTotal %d KiB within [16, 256] MiB", got, ok, limit, totalKiB)
	}
	t.Setenv("GOMEMLIMIT", "100MiB")
	if _, ok := defaultMemoryLimit(); ok {
		t.Fatal("a limit was chosen although GOMEMLIMIT is set")
	}
	root := t.TempDir()
	want := randomBytes(2000, 90)
	if err := os.WriteFile(filepath.Join(root, "f"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", root, "--log-level", "debug")
	cmd.Env = slices.DeleteFunc(os.Environ(), func(v string) bool { return strings.HasPrefix(v, "GOMEMLIMIT=") })
	srv := startBinary(t, cmd)
	line := srv.awaitLog(t, "memory limit")
	if !strings.Contains(line, "bytes="+strconv.FormatInt(limit, 10)) {
		t.Fatalf("log line %q, want bytes=%d", line, limit)
	}
	res, err := tftpGet(srv.addr, "f", clientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "100": 100, "100K": 100 << 10, "64M": 64 << 20, "64MiB": 64 << 20, "2g": 2 << 30} {
		if got, err := parseByteSize(in); err != nil || got != want {
			t.Errorf("%q: %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1T", "M", "1.5M", "99999999999G"} {
		if _, err := parseByteSize(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

// TestStatusLineAndRunningTransfers: with --systemd the server tells
// NOTIFY_SOCKET what it is doing, at most once a second and only when that
// changed; SIGUSR1 logs each running transfer.
func TestStatusLineAndRunningTransfers(t *testing.T) {
	root, uploads := t.TempDir(), t.TempDir()
	big := randomBytes(200_000, 130)
	os.WriteFile(filepath.Join(root, "big"), big, 0o644)
	since := time.Now()
	srv, addr, notify := startActivated(t, "-r", root, "--upload-dir", uploads)

	// Each STATUS= line, read as it comes.
	statuses := make(chan string, 100)
	go func() {
		buf := make([]byte, 256)
		for {
			n, err := notify.Read(buf)
			if err != nil {
				close(statuses)
				return
			}
			if text, ok := strings.CutPrefix(string(buf[:n]), "STATUS="); ok {
				statuses <- text
			}
		}
	}()
	var seen []string
	// awaitStatus waits for a STATUS= line that is want, or starts and
	// ends as want's two halves around a "*".
	awaitStatus := func(want string) {
		t.Helper()
		prefix, suffix, wild := strings.Cut(want, "*")
		timeout := time.After(15 * time.Second)
		for {
			select {
			case st, ok := <-statuses:
				if !ok {
					t.Fatalf("no STATUS=%s; seen %q", want, seen)
				}
				seen = append(seen, st)
				if st == want || wild && strings.HasPrefix(st, prefix) && strings.HasSuffix(st, suffix) {
					return
				}
			case <-timeout:
				t.Fatalf("no STATUS=%s within 15 s; seen %q", want, seen)
			}
		}
	}
	awaitStatus("0 transfers, 0 B sent, 0 uploads since start")

	// About 2 s: 391 blocks, each ACKed after 5 ms.
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		res, err := tftpGet(addr, "big", clientOptions{ackDelay: 5 * time.Millisecond, firstData: started})
		if err == nil && !bytes.Equal(res.data, big) {
			err = errors.New("the slow transfer's bytes differ")
		}
		done <- err
	}()
	<-started
	srv.cmd.Process.Signal(syscall.SIGUSR1)
	srv.awaitLog(t, `msg="running transfers" count=1`)
	line := srv.awaitLog(t, `msg="running transfer"`)
	for _, want := range []string{"file=big", "op=read", "blksize=512", "windowsize=1", "rate_MBps="} {
		if !strings.Contains(line, want) {
			t.Fatalf("running transfer logged as %q, without %s", line, want)
		}
	}
	awaitStatus("1 transfer, * sent, 0 uploads since start")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := tftpPut(addr, "switch.cfg", randomBytes(1000, 131), clientOptions{}); err != nil {
		t.Fatal(err)
	}
	awaitStatus("0 transfers, 200.0 kB sent, 1 upload since start")
	// Once a second at most: counted over the whole run, so that a late
	// read of one line cannot pass for two close together.
	if most := int(time.Since(since)/time.Second) + 1; len(seen) > most {
		t.Fatalf("%d STATUS lines in %v, more than one a second: %q", len(seen), time.Since(since), seen)
	}
	for i := 1; i < len(seen); i++ {
		if seen[i] == seen[i-1] {
			t.Fatalf("STATUS %q sent twice in a row", seen[i])
		}
	}
}
