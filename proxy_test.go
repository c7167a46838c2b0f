//go:build !noproxy

// The HTTP proxy and its cache, against loopback origins: links and the
// fallback map names to URLs that never leave their base, credentials reach
// the origin and never the log, upstream errors and cut bodies become the
// right TFTP errors, a body streams while it downloads, concurrent clients
// share one download, revalidation keeps old readers, and the cache keeps
// to HTTP's freshness rules (whatever the headers say) and to its bounds.
package main

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// upstream is a real HTTP server on loopback that counts what it is asked.
type upstream struct {
	*httptest.Server
	mu       sync.Mutex
	routes   map[string]http.HandlerFunc // by escaped path
	requests []*http.Request
}

func startUpstream(t *testing.T) *upstream {
	u := &upstream{routes: map[string]http.HandlerFunc{}}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.requests = append(u.requests, r.Clone(r.Context()))
		h := u.routes[r.URL.EscapedPath()]
		u.mu.Unlock()
		if h == nil {
			http.NotFound(w, r)
			return
		}
		h(w, r)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) handle(path string, h http.HandlerFunc) {
	u.mu.Lock()
	u.routes[path] = h
	u.mu.Unlock()
}

// count returns how many requests for path arrived, and how many of them
// were conditional.
func (u *upstream) count(path string) (all, conditional int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, r := range u.requests {
		if r.URL.EscapedPath() == path {
			all++
			if r.Header.Get("If-None-Match") != "" || r.Header.Get("If-Modified-Since") != "" {
				conditional++
			}
		}
	}
	return all, conditional
}

func (u *upstream) total() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.requests)
}

func (u *upstream) lastRequest(t *testing.T) *http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.requests) == 0 {
		t.Fatal("the upstream got no request")
	}
	return u.requests[len(u.requests)-1]
}

// serveBody answers with body and the given headers, with Content-Length.
func serveBody(body []byte, headers ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	}
}

// serveChunked answers without Content-Length.
func serveChunked(body []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for off := 0; off < len(body); off += 10_000 {
			w.Write(body[off:min(off+10_000, len(body))])
			w.(http.Flusher).Flush()
		}
	}
}

// serveGzip compresses the body when the client accepts gzip.
func serveGzip(body []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			serveBody(body)(w, r)
			return
		}
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		zw.Write(body)
		zw.Close()
	}
}

// serveCut declares declared bytes, sends sent of them and drops the
// connection (declared 0: chunked, no length).
func serveCut(body []byte, declared, sent int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if declared > 0 {
			w.Header().Set("Content-Length", strconv.Itoa(declared))
		}
		w.Write(body[:sent])
		w.(http.Flusher).Flush()
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	}
}

// TestProxyExampleTree is the README's example, with loopback servers in
// place of the example domains.
func TestProxyExampleTree(t *testing.T) {
	up := startUpstream(t)
	bodies := map[string][]byte{}
	for i, p := range []string{"/domain1/foo", "/domain2/bar", "/domain3/some-file", "/fallback/not-here"} {
		bodies[p] = randomBytes(3000+i, int64(i))
		up.handle(p, serveBody(bodies[p]))
	}
	ts := startServer(t, "127.0.0.1", "--fallback", up.URL+"/fallback/")
	existing := ts.writeFile(t, "existing", 1000)
	subdirFile := ts.writeFile(t, "subdir/file", 2000)
	ts.link(t, "domain1", "http+nocache://"+up.Listener.Addr().String()+"/domain1/")
	ts.link(t, "domain2", "http+nocompress://"+up.Listener.Addr().String()+"/domain2/")
	ts.link(t, "remote-file", "http+nocompress+nocache://"+up.Listener.Addr().String()+"/domain3/some-file")
	cases := []struct {
		name         string
		want         []byte
		upstreamPath string // "" for a local file
		identity     bool
	}{
		{"existing", existing, "", false},
		{"subdir/file", subdirFile, "", false},
		{"domain1/foo", bodies["/domain1/foo"], "/domain1/foo", false},
		{"domain2/bar", bodies["/domain2/bar"], "/domain2/bar", true},
		{"remote-file", bodies["/domain3/some-file"], "/domain3/some-file", true},
		{"not-here", bodies["/fallback/not-here"], "/fallback/not-here", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := up.total()
			res, err := tftpGet(ts.addr, c.name, clientOptions{blksize: 1468, tsize: true})
			if err != nil {
				t.Fatal(err)
			}
			assertSame(t, res.data, c.want)
			if res.oack["tsize"] != strconv.Itoa(len(c.want)) {
				t.Errorf("tsize %q, want %d", res.oack["tsize"], len(c.want))
			}
			if c.upstreamPath == "" {
				if up.total() != before {
					t.Fatal("a local file went upstream")
				}
				return
			}
			r := up.lastRequest(t)
			if r.URL.Path != c.upstreamPath {
				t.Fatalf("upstream asked for %q, want %q", r.URL.Path, c.upstreamPath)
			}
			if identity := r.Header.Get("Accept-Encoding") == "identity"; identity != c.identity {
				t.Fatalf("Accept-Encoding %q; nocompress is %v", r.Header.Get("Accept-Encoding"), c.identity)
			}
			if ua := r.Header.Get("User-Agent"); ua != "r-tftpd/"+version {
				t.Fatalf("User-Agent %q", ua)
			}
		})
	}
	// An existing directory never falls back.
	if err := os.Mkdir(filepath.Join(ts.root, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := tftpGet(ts.addr, "dir", clientOptions{})
	wantWireError(t, err, codeAccess)
}

// TestProxyNameCannotLeaveBase sends names that would change the URL's
// query or fragment or climb above the link's base if they were pasted in.
func TestProxyNameCannotLeaveBase(t *testing.T) {
	up := startUpstream(t)
	ts := startServer(t, "127.0.0.1")
	ts.link(t, "up", "http://"+up.Listener.Addr().String()+"/base/dir")
	names := []string{"a?b=c", "a#frag", "%2e%2e/secret", "..%2fsecret", "a%2F..%2F..%2Fsecret", "sp ace", "100%", "x/%2e%2e/%2e%2e/y", `back\slash`, "semi;colon", "\xff\xfe"}
	body := []byte("inside the base")
	for _, name := range names {
		full := "up/" + name
		target := (&remoteTarget{url: &url.URL{Scheme: "http", Host: "h", Path: "/base/dir"}}).below(strings.Split(name, "/")).url
		up.handle(target.EscapedPath(), serveBody(body))
		res, err := tftpGet(ts.addr, full, clientOptions{})
		if err != nil {
			t.Fatalf("%q: %v", full, err)
		}
		assertSame(t, res.data, body)
		r := up.lastRequest(t)
		if !strings.HasPrefix(r.URL.Path, "/base/dir/") || r.URL.RawQuery != "" || r.URL.Fragment != "" {
			t.Fatalf("%q reached %q (query %q)", full, r.URL.Path, r.URL.RawQuery)
		}
		for _, seg := range strings.Split(strings.TrimPrefix(r.URL.EscapedPath(), "/base/dir/"), "/") {
			if decoded, _ := url.PathUnescape(seg); decoded == ".." || decoded == "." {
				t.Fatalf("%q reached a dot segment: %q", full, r.URL.EscapedPath())
			}
		}
	}
	_, err := tftpGet(ts.addr, "up/../../etc/passwd", clientOptions{})
	wantWireError(t, err, codeAccess)
}

func TestProxyUpstreamErrors(t *testing.T) {
	up := startUpstream(t)
	for _, status := range []int{401, 403, 410, 500, 502} {
		up.handle("/status/"+strconv.Itoa(status), func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "no", status)
		})
	}
	up.handle("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/redirected", http.StatusFound)
	})
	moved := randomBytes(5000, 9)
	up.handle("/redirected", serveBody(moved))
	ts := startServer(t, "127.0.0.1")
	host := up.Listener.Addr().String()
	ts.link(t, "up", "http://"+host+"/")
	ts.link(t, "ftp", "ftp://"+host+"/")
	ts.link(t, "odd", "http+shiny://"+host+"/")
	// Port 1 on loopback: nothing listens there.
	ts.link(t, "down", "http://127.0.0.1:1/")

	cases := []struct {
		name string
		code uint16
	}{
		{"up/missing", codeNotFound},
		{"up/status/410", codeNotFound},
		{"up/status/401", codeAccess},
		{"up/status/403", codeAccess},
		{"up/status/500", codeUndefined},
		{"up/status/502", codeUndefined},
		{"ftp/file", codeUndefined},
		{"down/file", codeUndefined},
	}
	for _, c := range cases {
		_, err := tftpGet(ts.addr, c.name, clientOptions{})
		we := wantWireError(t, err, c.code)
		if strings.Contains(we.msg, "127.0.0.1") || strings.Contains(we.msg, "://") {
			t.Fatalf("%s: ERROR text %q names the upstream", c.name, we.msg)
		}
	}
	res, err := tftpGet(ts.addr, "up/redirect", clientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, moved)
	// An unknown modifier is ignored.
	res, err = tftpGet(ts.addr, "odd/redirected", clientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, moved)
}

// TestProxyCredentials: a link may carry a user and password for the
// upstream; they are sent as Basic authentication and never logged.
func TestProxyCredentials(t *testing.T) {
	up := startUpstream(t)
	want := randomBytes(3000, 11)
	up.handle("/private", func(w http.ResponseWriter, r *http.Request) {
		if user, pass, ok := r.BasicAuth(); !ok || user != "boot" || pass != "s3cret" {
			http.Error(w, "who are you", http.StatusUnauthorized)
			return
		}
		serveBody(want)(w, r)
	})
	ts := startServer(t, "127.0.0.1")
	var logged syncBuffer
	ts.server.cache.log = slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug}))
	host := up.Listener.Addr().String()
	ts.link(t, "auth", "http://boot:s3cret@"+host+"/")
	ts.link(t, "anonymous", "http://"+host+"/")
	res, err := tftpGet(ts.addr, "auth/private", clientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
	_, err = tftpGet(ts.addr, "anonymous/private", clientOptions{})
	wantWireError(t, err, codeAccess)
	ts.server.cache.dump()
	out := logged.String()
	if !strings.Contains(out, "cache entry") || strings.Contains(out, "s3cret") {
		t.Fatalf("the cache log should list the entry without its password:\n%s", out)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestProxyDisabled(t *testing.T) {
	up := startUpstream(t)
	up.handle("/f", serveBody([]byte("remote")))
	ts := startServer(t, "127.0.0.1", "--disable-proxy", "--fallback", up.URL+"/")
	ts.link(t, "up", up.URL+"/")
	local := ts.writeFile(t, "local", 700)
	for _, name := range []string{"up/f", "f"} {
		_, err := tftpGet(ts.addr, name, clientOptions{})
		wantWireError(t, err, codeNotFound)
	}
	res, err := tftpGet(ts.addr, "local", clientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, local)
	if n, _ := up.count("/f"); n != 0 {
		t.Fatalf("%d upstream requests with the proxy disabled", n)
	}
}

func TestProxyLocalFallbackDirectory(t *testing.T) {
	other := t.TempDir()
	want := randomBytes(1500, 3)
	if err := os.WriteFile(filepath.Join(other, "elsewhere"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, "127.0.0.1", "--fallback", other)
	res, err := tftpGet(ts.addr, "elsewhere", clientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
}

// TestProxyBodies covers the shapes of a body: with and without length,
// compressed, and asked for with and without tsize.
func TestProxyBodies(t *testing.T) {
	up := startUpstream(t)
	body := randomBytes(300_000, 4)
	up.handle("/length", serveBody(body))
	up.handle("/chunked", serveChunked(body))
	up.handle("/gzip", serveGzip(body))
	ts := startServer(t, "127.0.0.1")
	ts.link(t, "up", "http+nocache://"+up.Listener.Addr().String()+"/")
	ts.link(t, "plain", "http+nocache+nocompress://"+up.Listener.Addr().String()+"/")
	for _, link := range []string{"up", "plain"} {
		for _, path := range []string{"length", "chunked", "gzip"} {
			for _, tsize := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%s/tsize=%v", link, path, tsize), func(t *testing.T) {
					res, err := tftpGet(ts.addr, link+"/"+path, clientOptions{blksize: 1468, windowsize: 8, tsize: tsize})
					if err != nil {
						t.Fatal(err)
					}
					assertSame(t, res.data, body)
					if tsize && res.oack["tsize"] != strconv.Itoa(len(body)) {
						t.Fatalf("tsize %q, want %d", res.oack["tsize"], len(body))
					}
					r := up.lastRequest(t)
					if link == "plain" && r.Header.Get("Accept-Encoding") != "identity" {
						t.Fatalf("nocompress sent Accept-Encoding %q", r.Header.Get("Accept-Encoding"))
					}
				})
			}
		}
	}
}

// TestProxyStreamsDuringDownload holds the upstream body after its first
// part: the client must get blocks before the body is complete.
func TestProxyStreamsDuringDownload(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			up := startUpstream(t)
			body := randomBytes(200_000, 5)
			release := make(chan struct{})
			up.handle("/slow", func(w http.ResponseWriter, r *http.Request) {
				if !chunked {
					w.Header().Set("Content-Length", strconv.Itoa(len(body)))
				}
				w.Write(body[:20_000])
				w.(http.Flusher).Flush()
				select {
				case <-release:
				case <-time.After(20 * time.Second):
				}
				w.Write(body[20_000:])
			})
			ts := startServer(t, "127.0.0.1")
			ts.link(t, "up", up.URL+"/")
			l := startLockstep(t, ts.addr, "up/slow")
			for range 20 {
				if _, err := l.block(5 * time.Second); err != nil {
					close(release)
					t.Fatalf("before the body was complete: %v", err)
				}
			}
			close(release)
			got, err := l.rest(10 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			assertSame(t, got, body)
		})
	}
}

// TestProxyCutBodyIsAnError: a connection cut mid-body ends the transfer
// with an ERROR, never a short file, and the broken entry is not kept.
func TestProxyCutBodyIsAnError(t *testing.T) {
	up := startUpstream(t)
	body := randomBytes(100_000, 6)
	ts := startServer(t, "127.0.0.1")
	ts.link(t, "up", up.URL+"/")
	for _, declared := range []int{len(body), 0} {
		path := "/cut" + strconv.Itoa(declared)
		up.handle(path, serveCut(body, declared, 30_000))
		for _, o := range []clientOptions{{}, {tsize: true}, {blksize: 1468, windowsize: 16}} {
			res, err := tftpGet(ts.addr, "up"+path, o)
			if err == nil {
				t.Fatalf("%s %+v: received %d bytes as complete", path, o, len(res.data))
			}
			wantWireError(t, err, codeUndefined)
		}
		// The failure was not cached: the next request asks again and
		// gets the whole body.
		up.handle(path, serveBody(body, "Cache-Control", "max-age=600"))
		res, err := tftpGet(ts.addr, "up"+path, clientOptions{})
		if err != nil {
			t.Fatal(err)
		}
		assertSame(t, res.data, body)
	}
}

// TestProxyCacheSemantics counts the upstream requests behind each caching
// rule.
func TestProxyCacheSemantics(t *testing.T) {
	up := startUpstream(t)
	ts := startServer(t, "127.0.0.1")
	ts.link(t, "up", up.URL+"/")
	ts.link(t, "nc", "http+nocache://"+up.Listener.Addr().String()+"/")
	body := randomBytes(40_000, 7)
	lastModified := time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat)
	validated := func(headers ...string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			for i := 0; i+1 < len(headers); i += 2 {
				w.Header().Set(headers[i], headers[i+1])
			}
			if r.Header.Get("If-None-Match") == `"v1"` || r.Header.Get("If-Modified-Since") == lastModified {
				w.WriteHeader(http.StatusNotModified)
				return
			}
			serveBody(body)(w, r)
		}
	}
	up.handle("/fresh", serveBody(body, "Cache-Control", "max-age=600"))
	up.handle("/s-maxage", serveBody(body, "Cache-Control", "s-maxage=600, max-age=0"))
	up.handle("/expires", serveBody(body, "Expires", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)))
	up.handle("/expires0", serveBody(body, "Expires", "0", "ETag", `"v1"`))
	up.handle("/etag", validated("ETag", `"v1"`, "Cache-Control", "max-age=0"))
	up.handle("/no-cache", validated("ETag", `"v1"`, "Cache-Control", "no-cache"))
	up.handle("/last-modified", validated("Last-Modified", lastModified, "Cache-Control", "max-age=0"))
	up.handle("/no-store", serveBody(body, "Cache-Control", "no-store, max-age=600"))
	up.handle("/private", serveBody(body, "Cache-Control", `private="x, y", max-age=600`))
	up.handle("/bad-age", serveBody(body, "Cache-Control", "max-age=soon"))
	up.handle("/nocache-link", serveBody(body, "Cache-Control", "max-age=600"))

	cases := []struct {
		name              string
		gets, conditional int // after three fetches
	}{
		{"up/fresh", 1, 0},
		{"up/s-maxage", 1, 0},
		{"up/expires", 1, 0},
		{"up/expires0", 3, 2},
		{"up/etag", 3, 2},
		{"up/no-cache", 3, 2},
		{"up/last-modified", 3, 2},
		{"up/no-store", 3, 0},
		{"up/private", 3, 0},
		{"up/bad-age", 3, 0},
		{"nc/nocache-link", 3, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for range 3 {
				res, err := tftpGet(ts.addr, c.name, clientOptions{blksize: 1468, tsize: true})
				if err != nil {
					t.Fatal(err)
				}
				assertSame(t, res.data, body)
			}
			gets, conditional := up.count(strings.TrimPrefix(strings.TrimPrefix(c.name, "up"), "nc"))
			if gets != c.gets || conditional != c.conditional {
				t.Fatalf("%d requests (%d conditional), want %d (%d)", gets, conditional, c.gets, c.conditional)
			}
		})
	}
	// What a nocache link fetched was not stored: a plain link asks again.
	before, _ := up.count("/nocache-link")
	if _, err := tftpGet(ts.addr, "up/nocache-link", clientOptions{}); err != nil {
		t.Fatal(err)
	}
	if after, _ := up.count("/nocache-link"); after != before+1 {
		t.Fatal("a nocache download was stored")
	}
}

// TestProxyConcurrentClientsShareOneDownload starts many transfers of one
// URL while its body is held back: one GET serves them all.
func TestProxyConcurrentClientsShareOneDownload(t *testing.T) {
	up := startUpstream(t)
	body := randomBytes(500_000, 8)
	release := make(chan struct{})
	up.handle("/shared", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body[:1000])
		w.(http.Flusher).Flush()
		<-release
		w.Write(body[1000:])
	})
	ts := startServer(t, "127.0.0.1")
	ts.link(t, "up", up.URL+"/")
	const clients = 12
	errs := make(chan error, clients)
	for i := range clients {
		go func() {
			res, err := tftpGet(ts.addr, "up/shared", clientOptions{blksize: 1468, windowsize: 4, tsize: i%2 == 0})
			if err == nil && !bytes.Equal(res.data, body) {
				err = errors.New("received bytes differ from the body")
			}
			errs <- err
		}()
	}
	awaitReaders(t, ts.cache, up.URL+"/shared", clients)
	close(release)
	for range clients {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if gets, _ := up.count("/shared"); gets != 1 {
		t.Fatalf("%d upstream requests for %d concurrent clients, want 1", gets, clients)
	}
}

// TestProxyRevalidationKeepsOldReaders: a transfer reading an entry keeps
// its bytes when a revalidation brings a new body.
func TestProxyRevalidationKeepsOldReaders(t *testing.T) {
	up := startUpstream(t)
	v1, v2 := randomBytes(30_000, 10), randomBytes(35_000, 11)
	up.handle("/doc", serveBody(v1, "ETag", `"v1"`, "Cache-Control", "max-age=0"))
	ts := startServer(t, "127.0.0.1")
	ts.link(t, "up", up.URL+"/")
	old := startLockstep(t, ts.addr, "up/doc")
	for range 5 {
		if _, err := old.block(5 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// A download still running is shared without asking the origin: the
	// next request revalidates only once v1 is whole.
	awaitDownloaded(t, ts.cache, up.URL+"/doc")
	up.handle("/doc", serveBody(v2, "ETag", `"v2"`, "Cache-Control", "max-age=0"))
	res, err := tftpGet(ts.addr, "up/doc", clientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, v2)
	got, err := old.rest(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, got, v1)
}

// awaitReaders waits until n transfers read the cache entry for url.
func awaitReaders(t *testing.T, c *cache, url string, n int) {
	t.Helper()
	for start := time.Now(); ; time.Sleep(time.Millisecond) {
		c.mu.Lock()
		readers := 0
		if e := c.entries[url]; e != nil {
			readers = e.refs
		}
		c.mu.Unlock()
		if readers >= n {
			return
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("%d of %d transfers read %s after 10 s", readers, n, url)
		}
	}
}

// awaitDownloaded waits until the cache entry for url has its whole body.
func awaitDownloaded(t *testing.T, c *cache, url string) {
	t.Helper()
	c.mu.Lock()
	e := c.entries[url]
	c.mu.Unlock()
	if e == nil {
		t.Fatalf("no cache entry for %s", url)
	}
	timeout := time.After(10 * time.Second)
	for {
		_, _, done, err, changed := e.state()
		if done {
			if err != nil {
				t.Fatalf("download of %s: %v", url, err)
			}
			return
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("download of %s not done within 10 s", url)
		}
	}
}

// TestProxyCacheBounds checks eviction by size, the sweep, emptying, and
// that no cache file is left with a name.
func TestProxyCacheBounds(t *testing.T) {
	up := startUpstream(t)
	cacheDir := t.TempDir()
	ts := startServer(t, "127.0.0.1", "--cache-max-size", "100K", "-C", cacheDir)
	ts.link(t, "up", up.URL+"/")
	bodies := map[string][]byte{}
	for i, name := range []string{"a", "b", "c"} {
		bodies[name] = randomBytes(60_000, int64(20+i))
		up.handle("/"+name, serveBody(bodies[name], "Cache-Control", "max-age=600"))
	}
	fetch := func(name string) {
		t.Helper()
		res, err := tftpGet(ts.addr, "up/"+name, clientOptions{blksize: 1468})
		if err != nil {
			t.Fatal(err)
		}
		assertSame(t, res.data, bodies[name])
		ts.result(t)
	}
	gets := func(name string) int { n, _ := up.count("/" + name); return n }
	fetch("a")
	fetch("b") // a and b do not fit together: a, used least recently, goes
	fetch("b")
	fetch("a")
	if gets("a") != 2 || gets("b") != 1 {
		t.Fatalf("requests a=%d b=%d, want 2 and 1", gets("a"), gets("b"))
	}
	if entries, _ := os.ReadDir(cacheDir); len(entries) != 0 {
		t.Fatalf("cache files with names: %v", entries)
	}

	// The sweep keeps fresh entries and drops expired ones.
	ts.cache.sweep(time.Now())
	fetch("a")
	if gets("a") != 2 {
		t.Fatal("the sweep dropped a fresh entry")
	}
	ts.cache.sweep(time.Now().Add(2 * time.Hour))
	fetch("a")
	if gets("a") != 3 {
		t.Fatal("the sweep kept an expired entry")
	}

	ts.cache.clear()
	fetch("a")
	if gets("a") != 4 {
		t.Fatal("clear kept an entry")
	}
}

func TestAnonymousFiles(t *testing.T) {
	dir := t.TempDir()
	unlinked := func(dir string) (*os.File, error) { return namelessFile(dir, createHidden) }
	for name, create := range map[string]func(string) (*os.File, error){"O_TMPFILE": anonymousFile, "unlinked": unlinked} {
		f, err := create(dir)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want := []byte("cached bytes")
		if _, err := f.WriteAt(want, 0); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(want))
		if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: read %q, %v", name, got, err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Fatalf("%s: the file has a name: %v", name, entries)
		}
		f.Close()
	}
}

func TestFreshness(t *testing.T) {
	received := time.Date(2026, 1, 2, 12, 0, 0, 0, time.UTC)
	date := received.Format(http.TimeFormat)
	cases := []struct {
		headers  []string
		fresh    time.Duration // 0: stale
		storable bool
	}{
		{[]string{"Cache-Control", "max-age=60"}, 60 * time.Second, true},
		{[]string{"Cache-Control", "max-age=60, s-maxage=10"}, 10 * time.Second, true},
		{[]string{"Cache-Control", "MAX-AGE=60", "Age", "20"}, 40 * time.Second, true},
		{[]string{"Cache-Control", "max-age=60", "Date", received.Add(-30 * time.Second).Format(http.TimeFormat)}, 30 * time.Second, true},
		{[]string{"Cache-Control", "max-age=60, no-cache"}, 0, true},
		{[]string{"Cache-Control", "max-age=60, max-age=30"}, 0, true},
		{[]string{"Cache-Control", "max-age=-1"}, 0, true},
		{[]string{"Cache-Control", "no-store"}, 0, false},
		{[]string{"Cache-Control", `private, max-age=60`}, 60 * time.Second, false},
		{[]string{"Expires", received.Add(time.Hour).Format(http.TimeFormat), "Date", date}, time.Hour, true},
		{[]string{"Expires", "0", "Date", date}, 0, true},
		{[]string{"Expires", "yesterday"}, 0, true},
		{[]string{"Date", "garbage", "Cache-Control", "max-age=5"}, 5 * time.Second, true},
		{[]string{"Last-Modified", received.Add(-100 * time.Hour).Format(http.TimeFormat), "Date", date}, 10 * time.Hour, true},
		{[]string{"Last-Modified", received.Add(-1000 * time.Hour).Format(http.TimeFormat), "Date", date}, maxHeuristicFreshness, true},
		{[]string{"Cache-Control", "max-age=99999999999"}, maxDeltaSeconds * time.Second, true},
		{nil, 0, true},
	}
	for _, c := range cases {
		h := http.Header{}
		for i := 0; i+1 < len(c.headers); i += 2 {
			h.Add(c.headers[i], c.headers[i+1])
		}
		m := freshness(h, received, received)
		got := max(m.freshUntil.Sub(received), 0)
		if m.freshUntil.IsZero() {
			got = 0
		}
		if got != c.fresh || m.storable != c.storable {
			t.Errorf("%q: fresh for %v (storable %v), want %v (%v)", c.headers, got, m.storable, c.fresh, c.storable)
		}
	}
}

// BenchmarkProxyTransfer fetches the same 10 MB with the same client from a
// local file, through a nocache link (each fetch downloads from a loopback
// HTTP server while the transfer streams) and through a cached link (a fresh
// hit), in one run.
func BenchmarkProxyTransfer(b *testing.B) {
	const size = 10_000_000
	body := randomBytes(size, 40)
	origin := httptest.NewServer(serveBody(body, "Cache-Control", "max-age=3600"))
	b.Cleanup(origin.Close)
	for _, c := range []struct{ name, path, link string }{
		{"local", "file", ""},
		{"proxied-download", "nc/file", "http+nocache://"},
		{"proxied-cached", "up/file", "http://"},
	} {
		for _, window := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/window=%d", c.name, window), func(b *testing.B) {
				ts := startServer(b, "127.0.0.1", "--log-level", "warn")
				if err := os.WriteFile(filepath.Join(ts.root, "file"), body, 0o644); err != nil {
					b.Fatal(err)
				}
				for _, l := range []struct{ name, scheme string }{{"nc", "http+nocache://"}, {"up", "http://"}} {
					if err := os.Symlink(l.scheme+origin.Listener.Addr().String()+"/", filepath.Join(ts.root, l.name)); err != nil {
						b.Fatal(err)
					}
				}
				client := newBenchClient(b, ts.addr, c.path, 1468, window)
				if _, _, _, err := client.get(ts.addr, body); err != nil { // warms the cache
					b.Fatal(err)
				}
				<-ts.results
				b.SetBytes(size)
				b.ResetTimer()
				for range b.N {
					if _, _, _, err := client.get(ts.addr, body); err != nil {
						b.Fatal(err)
					}
					<-ts.results
				}
			})
		}
	}
}

// FuzzCacheHeaders: no header value makes freshness fail or promise more
// than the response allows.
func FuzzCacheHeaders(f *testing.F) {
	f.Add("max-age=60", "", "", "", "")
	f.Add(`no-cache="a, b", s-maxage=5`, "0", "Mon, 02 Jan 2006 15:04:05 GMT", "", "7")
	f.Add("max-age=1, max-age=2", "Thu, 01 Jan 1970 00:00:00 GMT", "garbage", "Sunday, 06-Nov-94 08:49:37 GMT", "-1")
	f.Add("private, no-store", "Sun Nov  6 08:49:37 1994", "", "Mon, 02 Jan 2006 15:04:05 GMT", "99999999999999999999")
	f.Fuzz(func(t *testing.T, cacheControl, expires, date, lastModified, age string) {
		h := http.Header{}
		for k, v := range map[string]string{"Cache-Control": cacheControl, "Expires": expires, "Date": date, "Last-Modified": lastModified, "Age": age} {
			if v != "" {
				h.Set(k, v)
			}
		}
		received := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
		meta := freshness(h, received.Add(-time.Second), received)
		cc := parseCacheControl(h.Values("Cache-Control"))
		if cc.noCache && !meta.freshUntil.IsZero() {
			t.Fatalf("no-cache response fresh until %v", meta.freshUntil)
		}
		if (cc.noStore || cc.private) && meta.storable {
			t.Fatal("no-store or private response storable")
		}
		if meta.freshUntil.After(received.Add(maxHeuristicFreshness)) && cc.maxAge < 0 && cc.sMaxAge < 0 && expires == "" {
			t.Fatalf("heuristic freshness until %v", meta.freshUntil)
		}
		if !meta.freshUntil.IsZero() && !meta.freshUntil.After(received) {
			t.Fatalf("fresh until %v, before it arrived", meta.freshUntil)
		}
	})
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

// TestProxyCacheMetrics: each cache lookup is counted by what the cache
// did, each request to the origin by method and status, and the cache's
// size is what it holds.
func TestProxyCacheMetrics(t *testing.T) {
	up := startUpstream(t)
	ts := startServer(t, "127.0.0.1")
	ts.link(t, "up", up.URL+"/")
	ts.link(t, "nc", "http+nocache://"+up.Listener.Addr().String()+"/")
	fresh, tagged, unstored := randomBytes(40_000, 90), randomBytes(25_000, 91), randomBytes(5000, 92)
	up.handle("/fresh", serveBody(fresh, "Cache-Control", "max-age=600"))
	up.handle("/etag", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Cache-Control", "max-age=0")
		if r.Header.Get("If-None-Match") == `"v1"` {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		serveBody(tagged)(w, r)
	})
	up.handle("/no-store", serveBody(unstored, "Cache-Control", "no-store"))
	for _, c := range []struct {
		name string
		want []byte
	}{
		{"up/fresh", fresh}, {"up/fresh", fresh}, // a miss, then a hit
		{"up/etag", tagged}, {"up/etag", tagged}, // a miss, then revalidated
		{"up/no-store", unstored}, {"nc/fresh", fresh}, // neither may be stored
	} {
		res, err := tftpGet(ts.addr, c.name, clientOptions{blksize: 1468})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		assertSame(t, res.data, c.want)
		ts.result(t)
	}
	if _, err := tftpGet(ts.addr, "up/missing", clientOptions{}); err == nil {
		t.Fatal("up/missing was served")
	}
	ts.result(t)
	text := string(ts.metrics.appendText(nil))
	promtoolCheck(t, text)
	expectSamples(t, text, map[string]float64{
		`tftpd_cache_requests_total{result="hit"}`:             1,
		`tftpd_cache_requests_total{result="miss"}`:            3, // fresh, etag, missing
		`tftpd_cache_requests_total{result="revalidated"}`:     1,
		`tftpd_cache_requests_total{result="uncacheable"}`:     2,
		`tftpd_cache_bytes`:                                    40_000 + 25_000,
		`tftpd_origin_requests_total{method="GET",code="200"}`: 4,
		`tftpd_origin_requests_total{method="GET",code="304"}`: 1,
		`tftpd_origin_requests_total{method="GET",code="404"}`: 1,
		`tftpd_transfers_total{op="read",outcome="complete"}`:  6,
		`tftpd_transfers_total{op="read",outcome="refused"}`:   1,
		`tftpd_requests_refused_total{reason="not_found"}`:     1,
	})
}
