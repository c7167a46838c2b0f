//go:build !noproxy

// Uploads relayed to HTTP: a WRQ below a URL link or fallback becomes a PUT
// whose body is the exact upload, an abort leaves the origin nothing, the
// final ACK waits for the origin's answer, the relay happens only when the
// flags allow it (a client the access rules refuse reaches no origin), and
// real clients upload into a real nginx with WebDAV.
package main

import (
	"errors"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// putStore is an HTTP origin's side of relayed uploads: what each PUT
// brought and how.
type putStore struct {
	mu     sync.Mutex
	bodies map[string][]byte
	reqs   map[string]*http.Request
}

func (p *putStore) handler(status int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return // the upload was cut: nothing is stored
		}
		p.mu.Lock()
		p.bodies[r.URL.Path], p.reqs[r.URL.Path] = body, r
		p.mu.Unlock()
		w.WriteHeader(status)
	}
}

func (p *putStore) get(t *testing.T, path string) ([]byte, *http.Request) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.reqs[path]
	if r == nil {
		t.Fatalf("no complete PUT of %s arrived", path)
	}
	return p.bodies[path], r
}

func TestUploadRelayToHTTP(t *testing.T) {
	up := startUpstream(t)
	store := &putStore{bodies: map[string][]byte{}, reqs: map[string]*http.Request{}}
	for _, path := range []string{"/sized", "/chunked", "/empty", "/text", "/private"} {
		up.handle(path, store.handler(http.StatusCreated))
	}
	up.handle("/forbidden", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusForbidden) })
	up.handle("/too-large", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusRequestEntityTooLarge) })
	up.handle("/full", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusInsufficientStorage)
	})
	up.handle("/teapot", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusTeapot)
	})
	up.handle("/broken", func(w http.ResponseWriter, r *http.Request) {
		io.ReadFull(r.Body, make([]byte, 1000))
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
		}
	})
	up.handle("/private-check", func(w http.ResponseWriter, r *http.Request) {
		if user, pass, ok := r.BasicAuth(); !ok || user != "backup" || pass != "s3cret" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		store.handler(http.StatusNoContent)(w, r)
	})
	ts := startServer(t, "127.0.0.1", "--upload-http")
	host := up.Listener.Addr().String()
	ts.link(t, "web", "http://"+host+"/")
	ts.link(t, "auth", "http://backup:s3cret@"+host+"/")
	ts.link(t, "anonymous", "http://"+host+"/")
	data := randomBytes(300_000, 5)

	for _, c := range []struct {
		name string
		o    clientOptions
		body []byte
		want int64 // the Content-Length the origin must see; -1 chunked
	}{
		{"web/sized", clientOptions{blksize: 1468, windowsize: 16, tsize: true}, data, int64(len(data))},
		{"web/chunked", clientOptions{blksize: 1024, windowsize: 4}, data, -1},
		{"web/empty", clientOptions{tsize: true}, nil, -1},
		{"auth/private-check", clientOptions{tsize: true}, data[:5000], 5000},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := tftpPut(ts.addr, c.name, c.body, c.o); err != nil {
				t.Fatal(err)
			}
			if r := ts.result(t); r.err != nil {
				t.Fatal(r.err)
			}
			path := c.name[strings.Index(c.name, "/"):]
			body, req := store.get(t, path)
			assertSame(t, body, c.body)
			if req.Method != http.MethodPut || req.ContentLength != c.want {
				t.Fatalf("%s with Content-Length %d, want PUT with %d", req.Method, req.ContentLength, c.want)
			}
			if c.want < 0 && len(req.TransferEncoding) == 0 && len(c.body) > 0 {
				t.Fatal("a body of unknown length was not sent chunked")
			}
		})
	}
	for _, c := range []struct {
		name string
		code uint16
	}{
		{"web/forbidden", codeAccess},
		{"anonymous/private-check", codeAccess},
		{"web/too-large", codeDiskFull},
		{"web/full", codeDiskFull},
		{"web/teapot", codeUndefined},
		{"web/broken", codeUndefined},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := tftpPut(ts.addr, c.name, data, clientOptions{blksize: 1024, windowsize: 8})
			we := wantWireError(t, err, c.code)
			if strings.Contains(we.msg, host) {
				t.Fatalf("the ERROR text %q names the upstream", we.msg)
			}
			ts.result(t)
		})
	}
}

// TestUploadRelayAbortStoresNothing: a client that aborts mid-upload ends
// the PUT without its last chunk, so the origin gets a broken body.
func TestUploadRelayAbortStoresNothing(t *testing.T) {
	up := startUpstream(t)
	ended := make(chan error, 1)
	up.handle("/aborted", func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		ended <- err
	})
	ts := startServer(t, "127.0.0.1", "--upload-http")
	ts.link(t, "web", "http://"+up.Listener.Addr().String()+"/")
	c := newRawClient(t, ts.addr)
	c.send((clientOptions{}).requestPacket(opWRQ, "web/aborted"))
	c.expectAck(0)
	// More than the relay buffers (32 KiB), so the origin has a body going.
	for blk := uint16(1); blk <= 80; blk++ {
		c.send(append([]byte{0, opDATA, byte(blk >> 8), byte(blk)}, randomBytes(512, int64(blk))...))
		c.expectAck(blk)
	}
	c.send([]byte{0, opERROR, 0, 0, 'n', 'o', 0})
	if r := ts.result(t); !errors.Is(r.err, errClientAbort) {
		t.Fatalf("server: %v, want the client's abort", r.err)
	}
	select {
	case err := <-ended:
		if err == nil {
			t.Fatal("the origin received a complete body from an aborted upload")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the origin's request did not end within 10 s")
	}
}

// TestUploadRelayAcksAfterOrigin: the final ACK goes out only once the
// origin has answered 2xx, and a cached body of the URL is dropped then.
func TestUploadRelayAcksAfterOrigin(t *testing.T) {
	up := startUpstream(t)
	var mu sync.Mutex
	current := []byte("old configuration\n")
	release := make(chan struct{})
	up.handle("/config", func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			mu.Lock()
			body := current
			mu.Unlock()
			serveBody(body, "Cache-Control", "max-age=3600")(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		<-release
		mu.Lock()
		current = body
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	ts := startServer(t, "127.0.0.1", "--upload-http")
	ts.link(t, "web", "http://"+up.Listener.Addr().String()+"/")
	res, err := tftpGet(ts.addr, "web/config", clientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, []byte("old configuration\n"))
	ts.result(t)

	c := newRawClient(t, ts.addr)
	c.send((clientOptions{}).requestPacket(opWRQ, "web/config"))
	c.expectAck(0)
	c.send(append([]byte{0, opDATA, 0, 1}, "new configuration\n"...))
	// Nothing may come back while the origin holds its answer.
	gotEarly := make(chan []byte, 1)
	go func() { gotEarly <- append([]byte(nil), c.recv()...) }()
	select {
	case pkt := <-gotEarly:
		t.Fatalf("got %q before the origin answered", pkt)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	if pkt := <-gotEarly; len(pkt) < 4 || pkt[1] != opACK || pkt[3] != 1 {
		t.Fatalf("got %q, want ACK 1", pkt)
	}
	ts.result(t)
	res, err = tftpGet(ts.addr, "web/config", clientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, []byte("new configuration\n"))
}

// TestUploadRelayWhen: a relay needs --upload-http or --upload-dir;
// --disable-proxy refuses it; with --upload-dir a URL fallback does not
// take new names, which stay in the folder.
func TestUploadRelayWhen(t *testing.T) {
	up := startUpstream(t)
	store := &putStore{bodies: map[string][]byte{}, reqs: map[string]*http.Request{}}
	up.handle("/x", store.handler(http.StatusCreated))
	url := "http://" + up.Listener.Addr().String() + "/"
	data := randomBytes(2000, 8)

	ts := startServer(t, "127.0.0.1", "--fallback", url)
	ts.link(t, "web", url)
	_, err := tftpPut(ts.addr, "web/x", data, clientOptions{})
	wantWireError(t, err, codeAccess)

	ts = startServer(t, "127.0.0.1", "--upload-http", "--disable-proxy")
	ts.link(t, "web", url)
	_, err = tftpPut(ts.addr, "web/x", data, clientOptions{})
	if we := wantWireError(t, err, codeAccess); !strings.Contains(we.msg, "disabled") {
		t.Fatalf("got %q", we.msg)
	}

	ts = startServer(t, "127.0.0.1", "--upload-http", "--fallback", url)
	if _, err := tftpPut(ts.addr, "x", data, clientOptions{}); err != nil {
		t.Fatal(err)
	}
	ts.result(t)
	body, _ := store.get(t, "/x")
	assertSame(t, body, data)

	ts, dir := startUploadServer(t, "127.0.0.1", "--fallback", url)
	ts.link(t, "web", url)
	other := randomBytes(3000, 9)
	for _, name := range []string{"x", "web/x"} {
		if _, err := tftpPut(ts.addr, name, other, clientOptions{}); err != nil {
			t.Fatal(err)
		}
		ts.result(t)
	}
	assertSame(t, readFile(t, filepath.Join(dir, "x")), other)
	body, _ = store.get(t, "/x")
	assertSame(t, body, other)
}

// TestUploadRelayToNginx puts uploads from real clients into a real nginx
// with WebDAV PUT, and reads them back through the same link.
func TestUploadRelayToNginx(t *testing.T) {
	docroot := t.TempDir()
	if err := os.Mkdir(filepath.Join(docroot, "dav"), 0o755); err != nil {
		t.Fatal(err)
	}
	addr, accessLog := startNginx(t, docroot)
	ts := startServer(t, "127.0.0.1", "-t", "3", "--upload-http")
	ts.link(t, "backup", "http://"+addr+"/dav/")
	host, port := ts.addr.Addr().String(), strconv.Itoa(int(ts.addr.Port()))
	src := t.TempDir()
	for i, c := range []interopCase{
		{"curl", "curl", curlArgs(opWRQ, "--tftp-blksize", "1468"), 1468, 1},
		{"atftp", "atftp", atftpArgs(opWRQ, "blksize 1468", "windowsize 16"), 1468, 16},
		{"tftp", "tftp-hpa", tftpHPAArgs(opWRQ, false), 512, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			bin := needClient(t, c.client)
			want := randomBytes(400_000+i, int64(i))
			local := filepath.Join(src, "cfg")
			os.WriteFile(local, want, 0o644)
			remote := "backup/router-" + strconv.Itoa(i) + ".cfg"
			out, err := exec.Command(bin, c.args(host, port, remote, local)...).CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s\nnginx: %s", c.name, err, out, accessLog())
			}
			if r := ts.result(t); r.err != nil || r.windowsize != c.windowsize {
				t.Fatalf("server: %v, windowsize %d", r.err, r.windowsize)
			}
			assertSame(t, readFile(t, filepath.Join(docroot, "dav", "router-"+strconv.Itoa(i)+".cfg")), want)
			res, err := tftpGet(ts.addr, remote, clientOptions{blksize: 1468})
			if err != nil {
				t.Fatal(err)
			}
			assertSame(t, res.data, want)
			ts.result(t)
		})
	}
}

// TestRefusedClientsReachNoOrigin: behind a URL link and a mapping rule
// that leads to it, a denied client's read and an upload from a client
// outside --upload-allow get exactly ERROR 2 "access violation", and the
// origin is asked nothing; an allowed client's read and upload then reach
// it, through the same rule.
func TestRefusedClientsReachNoOrigin(t *testing.T) {
	up := startUpstream(t)
	body := randomBytes(3000, 22)
	up.handle("/base/file", serveBody(body))
	store := &putStore{bodies: map[string][]byte{}, reqs: map[string]*http.Request{}}
	up.handle("/base/backup", store.handler(http.StatusCreated))
	rules := filepath.Join(t.TempDir(), "map.rules")
	if err := os.WriteFile(rules, []byte("r ^config$ link/backup\nr ^boot$ link/file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, "127.0.0.1", "--upload-http", "--map-file", rules,
		"--deny", "127.0.0.2", "--upload-allow", "127.0.0.1")
	ts.link(t, "link", up.URL+"/base/")
	reader := netip.MustParseAddr("127.0.0.3") // may read, not write
	expectAccessViolation(t, ts.addr, netip.MustParseAddr("127.0.0.2"), rrq("boot", "octet"))
	expectAccessViolation(t, ts.addr, reader, clientOptions{}.requestPacket(opWRQ, "config"))
	if n := up.total(); n != 0 {
		t.Fatalf("the origin got %d requests from refused clients, want none", n)
	}
	res, err := tftpGet(ts.addr, "boot", clientOptions{local: reader})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, body)
	ts.result(t)
	if _, err := tftpPut(ts.addr, "config", body, clientOptions{local: netip.MustParseAddr("127.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	ts.result(t)
	got, _ := store.get(t, "/base/backup")
	assertSame(t, got, body)
	if n := up.total(); n != 2 {
		t.Fatalf("the origin got %d requests, want the allowed GET and PUT", n)
	}
}
