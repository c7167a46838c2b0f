//go:build !noproxy

// The proxy against a real origin: through nginx (gzip, freshness headers,
// ETags) real clients fetch exact bytes, fresh entries come from the cache
// without a request, stale ones are revalidated, and nginx sees the paths,
// statuses and encodings the cache should cause.
package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// nginxConf serves a document root on one loopback port with gzip on, and a
// day of freshness below /cached/, and WebDAV PUT below /dav/. Every path
// is inside the test's folder.
const nginxConf = `daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 64; }
http {
	log_format upstream '$request_uri $status encoding=$sent_http_content_encoding';
	access_log %[1]s/access.log upstream;
	client_body_temp_path %[1]s/tmp;
	proxy_temp_path %[1]s/tmp;
	fastcgi_temp_path %[1]s/tmp;
	uwsgi_temp_path %[1]s/tmp;
	scgi_temp_path %[1]s/tmp;
	types { text/plain txt; application/octet-stream img; }
	gzip on;
	gzip_types text/plain application/octet-stream;
	gzip_min_length 1;
	server {
		listen %[2]s;
		root %[3]s;
		location /cached/ { expires 1d; }
		location /dav/ { dav_methods PUT; client_max_body_size 0; }
	}
}
`

// startNginx runs Debian's nginx on a free loopback port and returns its
// address and a function that reads its access log.
func startNginx(t *testing.T, docroot string) (string, func() string) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		bin, err = exec.LookPath("/usr/sbin/nginx")
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("nginx is not installed (CI=true)")
		}
		t.Skip("nginx is not installed")
	}
	probe, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.Addr().String()
	probe.Close()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(nginxConf, dir, addr, docroot)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp4", addr); err == nil {
			c.Close()
			break
		}
		if time.Since(start) > 5*time.Second {
			errLog, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx did not listen on %s: %s%s", addr, stderr.String(), errLog)
		}
	}
	return addr, func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "access.log"))
		return string(b)
	}
}

// TestNginxEndToEnd fetches through URL links from a real nginx with gzip
// on, with real TFTP clients, and compares the bytes.
func TestNginxEndToEnd(t *testing.T) {
	docroot := t.TempDir()
	image := randomBytes(3_000_000, 30)
	var text bytes.Buffer
	for i := 0; text.Len() < 400_000; i++ {
		fmt.Fprintf(&text, "line %d of a compressible boot script\n", i)
	}
	for path, data := range map[string][]byte{"images/boot.img": image, "cached/script.txt": text.Bytes()} {
		full := filepath.Join(docroot, path)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A Last-Modified after the response's Date leaves the image no
	// heuristic freshness (RFC 9111 4.2.2): a tenth of a file's few seconds
	// of age would let a fetch right after the first be served without the
	// revalidation the last case expects.
	future := time.Now().Add(time.Hour)
	if err := os.Chtimes(filepath.Join(docroot, "images/boot.img"), future, future); err != nil {
		t.Fatal(err)
	}
	addr, accessLog := startNginx(t, docroot)
	ts := startServer(t, "127.0.0.1", "-t", "3")
	ts.link(t, "web", "http://"+addr+"/")
	ts.link(t, "plain", "http+nocompress://"+addr+"/")
	host, port := ts.addr.Addr().String(), strconv.Itoa(int(ts.addr.Port()))

	curl := interopCase{"curl", "curl", curlArgs(opRRQ, "--tftp-blksize", "1468"), 1468, 1}
	atftp := interopCase{"atftp", "atftp", atftpArgs(opRRQ, "blksize 1468", "windowsize 16", "tsize 0"), 1468, 16}
	for _, c := range []struct {
		client   interopCase
		remote   string
		want     []byte
		requests int    // how many requests nginx must see
		status   string // and the status of its answer
		encoding string // and what encoding it sent
	}{
		{curl, "web/cached/script.txt", text.Bytes(), 1, "200", "gzip"},
		{atftp, "web/cached/script.txt", text.Bytes(), 0, "", ""}, // fresh in the cache
		{atftp, "plain/images/boot.img", image, 1, "200", "-"},
		// The same URL without modifiers: the cached body is stale (nginx
		// sends no freshness for it) and revalidated with its ETag.
		{curl, "web/images/boot.img", image, 1, "304", "-"},
	} {
		t.Run(c.client.name+"/"+c.remote, func(t *testing.T) {
			before := accessLog()
			assertSame(t, fetchWithClient(t, c.client, host, port, c.remote), c.want)
			// nginx logs a request once it has ended, which can be just
			// after the transfer: wait for the line, or a while for none.
			var added []string
			for start := time.Now(); time.Since(start) < 3*time.Second; time.Sleep(50 * time.Millisecond) {
				added = strings.Fields(strings.TrimPrefix(accessLog(), before))
				if len(added) > 0 || (c.requests == 0 && time.Since(start) > 300*time.Millisecond) {
					break
				}
			}
			if len(added) != 3*c.requests {
				t.Fatalf("nginx saw %q, want %d request(s)", added, c.requests)
			}
			if c.requests == 1 && (added[0] != c.remote[strings.Index(c.remote, "/"):] || added[1] != c.status || added[2] != "encoding="+c.encoding) {
				t.Fatalf("nginx log %q, want %s for the path with encoding %s", added, c.status, c.encoding)
			}
		})
	}
}
