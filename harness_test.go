// The harness every test file shares, so that each test names only what it
// proves: a server in the test's process on an ephemeral loopback port, its
// log in the test's log and each finished transfer reported on a channel;
// the files it serves and the uploads it takes; byte comparisons; hand-made
// request packets and a scripted peer whose every packet the test writes;
// and the server binary, built once, run as a process whose log the test
// reads. Everything cleans up after itself.
package main

import (
	"bufio"
	"bytes"
	"math/rand"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testServer is a server running in the test's process: addr is its
// (first) listening address, addrs all of them, root the folder it serves,
// results the report of every transfer it finished.
type testServer struct {
	*server
	addr    netip.AddrPort
	addrs   []netip.AddrPort
	root    string
	results chan transferReport
	log     *testLogWriter
}

// testLogWriter sends the server's log to the test's log, and keeps its
// lines for a test that waits for one (see awaitLog).
type testLogWriter struct {
	t     testing.TB
	mu    sync.Mutex
	lines []string
	added chan struct{} // closed, and replaced, when a line comes
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimRight(p, "\n"))
	w.t.Logf("%s", line)
	w.mu.Lock()
	w.lines = append(w.lines, line)
	close(w.added)
	w.added = make(chan struct{})
	w.mu.Unlock()
	return len(p), nil
}

// awaitLog waits until the server has logged a line containing text: an
// event that nothing on the wire shows, such as a request it ignored.
func (ts *testServer) awaitLog(t testing.TB, text string, wait time.Duration) {
	t.Helper()
	timeout := time.After(wait)
	for seen := 0; ; {
		ts.log.mu.Lock()
		lines, added := ts.log.lines[seen:], ts.log.added
		seen = len(ts.log.lines)
		ts.log.mu.Unlock()
		for _, line := range lines {
			if strings.Contains(line, text) {
				return
			}
		}
		select {
		case <-added:
		case <-timeout:
			t.Fatalf("the server logged no %q within %v", text, wait)
		}
	}
}

// startServer runs a server on an ephemeral loopback port with the given
// command-line arguments (root, listen address and port are set here; a
// further -l adds a listening address, with its own ephemeral port).
func startServer(t testing.TB, listen string, args ...string) *testServer {
	t.Helper()
	root := t.TempDir()
	full := append([]string{"-r", root, "-l", listen, "-p", "0", "-t", "0.2", "--log-level", "debug"}, args...)
	cfg, err := parseFlags(full, nil)
	if err != nil {
		t.Fatalf("parseFlags(%q): %v", full, err)
	}
	conns, err := listenUDP(cfg)
	if err != nil {
		t.Fatal(err)
	}
	logw := &testLogWriter{t: t, added: make(chan struct{})}
	srv, err := newServer(cfg, conns, newLogger(cfg, logw))
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{
		server:  srv,
		root:    root,
		results: make(chan transferReport, 1000),
		log:     logw,
	}
	for _, conn := range conns {
		ts.addrs = append(ts.addrs, conn.LocalAddr().(*net.UDPAddr).AddrPort())
	}
	ts.addr = ts.addrs[0]
	srv.env.onDone = func(r transferReport) { ts.results <- r }
	served := make(chan struct{})
	go func() { srv.serve(); close(served) }()
	t.Cleanup(func() {
		srv.shutdown(time.Second)
		<-served
	})
	return ts
}

// startUploadServer runs a server that takes uploads into a folder of its
// own; it returns the server and the folder.
func startUploadServer(t testing.TB, listen string, args ...string) (*testServer, string) {
	t.Helper()
	dir := t.TempDir()
	return startServer(t, listen, append([]string{"--upload-dir", dir}, args...)...), dir
}

// writeFile puts size bytes of seeded random data at name below the root.
func (ts *testServer) writeFile(t testing.TB, name string, size int) []byte {
	t.Helper()
	data := randomBytes(size, int64(size))
	path := filepath.Join(ts.root, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return data
}

// link puts a symlink at name below the root: to a URL it is a proxy link.
func (ts *testServer) link(t *testing.T, name, target string) {
	t.Helper()
	path := filepath.Join(ts.root, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
}

// result waits for the server's report of the next finished transfer.
func (ts *testServer) result(t testing.TB) transferReport {
	t.Helper()
	select {
	case r := <-ts.results:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("no transfer finished within 30 s")
		return transferReport{}
	}
}

// assertSame fails unless got holds exactly want's bytes.
func assertSame(t testing.TB, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("received %d bytes, want %d bytes; contents differ", len(got), len(want))
	}
}

// readFile is a file's contents, or the test's failure.
func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// randomBytes is n bytes from a seeded generator: the same for a seed.
func randomBytes(n int, seed int64) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// loopbacks are the addresses a test runs on when both families matter.
var loopbacks = []string{"127.0.0.1", "::1"}

// rrq is a read request for name; rest follows as NUL-ended fields: the
// mode, then option names and values.
func rrq(name string, rest ...string) []byte {
	b := append([]byte{0, opRRQ}, name...)
	b = append(b, 0)
	for _, r := range rest {
		b = append(append(b, r...), 0)
	}
	return b
}

// exchange sends one raw packet to addr and returns the reply, or nil when
// none comes within wait.
func exchange(t *testing.T, addr netip.AddrPort, pkt []byte, wait time.Duration) []byte {
	t.Helper()
	reply, _ := exchangeFrom(t, addr, netip.Addr{}, pkt, wait)
	return reply
}

// exchangeFrom is exchange from local address local (any when unset); it
// also returns where the reply came from.
func exchangeFrom(t *testing.T, addr netip.AddrPort, local netip.Addr, pkt []byte, wait time.Duration) ([]byte, netip.AddrPort) {
	t.Helper()
	conn, err := dialClientFrom(addr, local)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.WriteToUDPAddrPort(pkt, addr); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 2048)
	n, from, err := conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil, netip.AddrPort{}
	}
	return buf[:n], unmap(from)
}

// scriptedPeer is a client whose every packet the test writes by hand.
type scriptedPeer struct {
	t      *testing.T
	conn   *net.UDPConn
	server netip.AddrPort // the transfer's port once the first reply came
	buf    []byte
}

func newScriptedPeer(t *testing.T, listener netip.AddrPort, request []byte) *scriptedPeer {
	conn, err := dialClient(listener)
	if err != nil {
		t.Fatal(err)
	}
	return newScriptedPeerOn(t, conn, listener, request)
}

// newScriptedPeerOn is a scripted peer on a socket the test opened, say on
// another loopback address.
func newScriptedPeerOn(t *testing.T, conn *net.UDPConn, listener netip.AddrPort, request []byte) *scriptedPeer {
	t.Cleanup(func() { conn.Close() })
	if _, err := conn.WriteToUDPAddrPort(request, listener); err != nil {
		t.Fatal(err)
	}
	return &scriptedPeer{t: t, conn: conn, buf: make([]byte, 2048)}
}

// next returns the next packet from the server, or nil after wait.
func (p *scriptedPeer) next(wait time.Duration) []byte {
	p.conn.SetReadDeadline(time.Now().Add(wait))
	n, from, err := p.conn.ReadFromUDPAddrPort(p.buf)
	if isTimeout(err) {
		return nil
	}
	if err != nil {
		p.t.Fatal(err)
	}
	p.server = unmap(from)
	return p.buf[:n]
}

// abort ends the session with an ERROR, as a client that gives up does.
func (p *scriptedPeer) abort() {
	p.conn.WriteToUDPAddrPort([]byte{0, opERROR, 0, 0, 'e', 'n', 'o', 'u', 'g', 'h', 0}, p.server)
}

func (p *scriptedPeer) ack(blk uint16) {
	if _, err := p.conn.WriteToUDPAddrPort([]byte{0, opACK, byte(blk >> 8), byte(blk)}, p.server); err != nil {
		p.t.Fatal(err)
	}
}

// copiesUntilSilent reads the copies of block blk, each checked against
// source (blksize 512), until a second passes without one (the first may
// take up to first), and returns how many came: a lockstep client that
// takes none of them, until the server falls silent.
func (p *scriptedPeer) copiesUntilSilent(source []byte, blk uint16, first time.Duration) int {
	p.t.Helper()
	copies := 0
	for pkt := p.next(first); pkt != nil && copies < 20; pkt = p.next(time.Second) {
		if got := p.dataBlock(pkt, source, 512); got != blk {
			p.t.Fatalf("block %d, want %d", got, blk)
		}
		copies++
	}
	return copies
}

// dataBlock checks that pkt is DATA with the source's bytes for its block
// number, and returns that number.
func (p *scriptedPeer) dataBlock(pkt, source []byte, blksize int) uint16 {
	p.t.Helper()
	if len(pkt) < 4 || pkt[1] != opDATA {
		p.t.Fatalf("got %q, want DATA", pkt)
	}
	blk := uint16(pkt[2])<<8 | uint16(pkt[3])
	start := (int(blk) - 1) * blksize
	assertSame(p.t, pkt[4:], source[start:min(start+blksize, len(source))])
	return blk
}

// serverBinary is built once by TestMain for the tests that exec it.
var serverBinary string

func TestMain(m *testing.M) {
	if os.Getenv(inNetnsEnv) != "" {
		// A single test re-run in a network namespace, with the binary
		// the first run built.
		serverBinary = os.Getenv(serverBinaryEnv)
		os.Exit(m.Run())
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

// listeningRE finds the address in the server's "listening" log line.
var listeningRE = regexp.MustCompile(`msg=listening addr=(\S+)`)

// runningBinary is a server process whose log goes to the test's log.
type runningBinary struct {
	cmd     *exec.Cmd
	addr    netip.AddrPort // from its "listening" log line
	logDone chan struct{}
	log     chan string // the log lines, while there is room
	// The whole log's size: lines, bytes and the longest line's bytes.
	logLines, logBytes, longestLine atomic.Int64
}

// counted notes a log line in the size counters.
func (b *runningBinary) counted(line string) string {
	b.logLines.Add(1)
	b.logBytes.Add(int64(len(line)) + 1)
	if n := int64(len(line)); n > b.longestLine.Load() {
		b.longestLine.Store(n) // only the scanning goroutine stores
	}
	return line
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

// startBinary starts cmd, a server process, and returns once it logged the
// address it listens on; the process is killed when the test ends.
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
	lines.Buffer(make([]byte, 64*1024), 1<<20)
	for lines.Scan() {
		t.Log(b.counted(lines.Text()))
		select {
		case b.log <- lines.Text():
		default:
		}
		if m := listeningRE.FindStringSubmatch(lines.Text()); m != nil {
			b.addr = netip.MustParseAddrPort(m[1])
			break
		}
	}
	go func() {
		defer close(b.logDone)
		for lines.Scan() {
			t.Log(b.counted(lines.Text()))
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
