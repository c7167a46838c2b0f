package main

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
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
		{"-l", "not-an-ip"}, {"-r", "/nonexistent/dir"},
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
		"--log-format", "--cache-dir", "--no-rfc2347", "--wrq-devnull", "--disable-proxy", "--version", "--root"} {
		if !strings.Contains(stdout.String(), flag) {
			t.Errorf("--help does not mention %s", flag)
		}
	}
}

// serverBinary is built once by TestMain for the tests that exec it.
var serverBinary string

func TestMain(m *testing.M) {
	if os.Getenv(inNetnsEnv) != "" {
		os.Exit(m.Run()) // a single test re-run in a network namespace
	}
	dir, err := os.MkdirTemp("", "r-tftpd-test")
	if err != nil {
		panic(err)
	}
	serverBinary = filepath.Join(dir, "r-tftpd")
	build := exec.Command("go", "build", "-o", serverBinary, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		panic("building the server: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var listeningRE = regexp.MustCompile(`msg=listening addr=(\S+)`)

// runningBinary is a server process whose log goes to the test's log.
type runningBinary struct {
	cmd     *exec.Cmd
	addr    netip.AddrPort // from its "listening" log line
	logDone chan struct{}
	log     chan string // the log lines after "listening", while there is room
}

// awaitLog waits for a log line containing s.
func (b *runningBinary) awaitLog(t *testing.T, s string) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case line := <-b.log:
			if strings.Contains(line, s) {
				return line
			}
		case <-timeout:
			t.Fatalf("no log line with %q within 10 s", s)
		}
	}
}

// wait waits for the process to exit, after its whole log has been read.
func (b *runningBinary) wait() error {
	<-b.logDone
	return b.cmd.Wait()
}

func startBinary(t *testing.T, cmd *exec.Cmd) *runningBinary {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	b := &runningBinary{cmd: cmd, logDone: make(chan struct{}), log: make(chan string, 1000)}
	lines := bufio.NewScanner(stderr)
	for lines.Scan() {
		t.Log(lines.Text())
		if m := listeningRE.FindStringSubmatch(lines.Text()); m != nil {
			b.addr = netip.MustParseAddrPort(m[1])
			break
		}
	}
	go func() {
		defer close(b.logDone)
		for lines.Scan() {
			t.Log(lines.Text())
			select {
			case b.log <- lines.Text():
			default:
			}
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		b.wait()
	})
	if !b.addr.IsValid() {
		t.Fatalf("server exited without listening")
	}
	return b
}

func TestSocketActivationAndNotify(t *testing.T) {
	root := t.TempDir()
	want := []byte(strings.Repeat("socket activation\n", 1000))
	os.WriteFile(filepath.Join(root, "boot.img"), want, 0o644)

	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sock, err := conn.File()
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	notifyPath := filepath.Join(t.TempDir(), "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()

	// LISTEN_PID must be the server's own pid, which only the child knows:
	// the shell sets it to its own pid and exec keeps it.
	cmd := exec.Command("sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`, serverBinary, "--systemd", "-r", root)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath)
	cmd.ExtraFiles = []*os.File{sock}
	srv := startBinary(t, cmd)
	expectNotify(t, notify, "READY=1")

	res, err := tftpGet(conn.LocalAddr().(*net.UDPAddr).AddrPort(), "boot.img", clientOptions{blksize: 1468, tsize: true})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)

	cmd.Process.Signal(syscall.SIGTERM)
	expectNotify(t, notify, "STOPPING=1")
	if err := srv.wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

func expectNotify(t *testing.T, notify *net.UnixConn, want string) {
	t.Helper()
	notify.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 256)
	n, err := notify.Read(buf)
	if err != nil || string(buf[:n]) != want {
		t.Fatalf("notify: %q, %v; want %q", buf[:n], err, want)
	}
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
	go func() {
		// About 0.6 s: 128 ACKs, each after 5 ms.
		res, err := tftpGet(srv.addr, "f", clientOptions{ackDelay: 5 * time.Millisecond})
		done <- fetched{res, err}
	}()
	time.Sleep(100 * time.Millisecond)
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

// TestCacheSignals: SIGUSR1 logs the cache, SIGUSR2 empties it.
func TestCacheSignals(t *testing.T) {
	body := randomBytes(20_000, 50)
	var gets atomic.Int32
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		serveBody(body, "Cache-Control", "max-age=600")(w, r)
	}))
	defer origin.Close()
	root := t.TempDir()
	if err := os.Symlink(origin.URL+"/", filepath.Join(root, "web")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", root)
	srv := startBinary(t, cmd)
	fetch := func() {
		t.Helper()
		res, err := tftpGet(srv.addr, "web/boot.img", clientOptions{})
		if err != nil {
			t.Fatal(err)
		}
		assertSame(t, res.data, body)
	}
	fetch()
	srv.awaitLog(t, "transfer complete")
	cmd.Process.Signal(syscall.SIGUSR1)
	if line := srv.awaitLog(t, "cache entry"); !strings.Contains(line, origin.URL+"/boot.img") || !strings.Contains(line, "bytes=20000") {
		t.Fatalf("SIGUSR1 logged %q", line)
	}
	fetch()
	if gets.Load() != 1 {
		t.Fatalf("%d upstream requests before SIGUSR2, want 1", gets.Load())
	}
	cmd.Process.Signal(syscall.SIGUSR2)
	srv.awaitLog(t, "cache emptied")
	fetch()
	if gets.Load() != 2 {
		t.Fatalf("%d upstream requests after SIGUSR2, want 2", gets.Load())
	}
}
