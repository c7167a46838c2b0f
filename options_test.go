// The options tftpd-hpa users have: --refuse and --reject-all, as real
// clients and the project's own client see them in the OACK, with the
// bytes each receives exact.
package main

import (
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// atftpOACKRE is the OACK line of atftp --trace: "received OACK <tsize: 3000, blksize: 1468, >".
var atftpOACKRE = regexp.MustCompile(`received OACK <([^>]*)>`)

// atftpTracedGet fetches remote with atftp --trace asking for options, and
// returns the bytes it wrote and the OACK it reports (nil when the server
// sent none).
func atftpTracedGet(t *testing.T, server *testServer, remote string, options ...string) ([]byte, map[string]string) {
	t.Helper()
	local := filepath.Join(t.TempDir(), "out")
	c := interopCase{client: "atftp", name: "atftp --trace", args: func(host, port, remote, local string) []string {
		return append([]string{"--trace"}, atftpArgs(opRRQ, options...)(host, port, remote, local)...)
	}}
	out := runClient(t, c, server.addr.Addr().String(), strconv.Itoa(int(server.addr.Port())), remote, local)
	got := readFile(t, local)
	m := atftpOACKRE.FindStringSubmatch(string(out))
	if m == nil {
		return got, nil
	}
	oack := map[string]string{}
	for _, pair := range strings.Split(m[1], ",") {
		if name, value, ok := strings.Cut(strings.TrimSpace(pair), ": "); ok {
			oack[name] = value
		}
	}
	return got, oack
}

// TestRefusedOptionsAreNeverAcknowledged: a refused option is left out of
// the OACK and the transfer runs as if the client had not asked for it;
// the others are acknowledged as usual. Names are case-insensitive.
func TestRefusedOptionsAreNeverAcknowledged(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "--refuse", "WindowSize", "--refuse", "tsize")
	want := ts.writeFile(t, "file", 100_000)

	res, err := tftpGet(ts.addr, "file", clientOptions{blksize: 1024, windowsize: 8, timeout: 2, tsize: true})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
	if wantOACK := map[string]string{"blksize": "1024", "timeout": "2"}; !maps.Equal(res.oack, wantOACK) {
		t.Fatalf("OACK %v, want %v", res.oack, wantOACK)
	}
	if r := ts.result(t); r.err != nil || r.blksize != 1024 || r.windowsize != 1 {
		t.Fatalf("server: %v, blksize %d, windowsize %d; want 1024 and 1", r.err, r.blksize, r.windowsize)
	}

	got, oack := atftpTracedGet(t, ts, "file", "blksize 1468", "windowsize 16", "tsize 0")
	assertSame(t, got, want)
	if wantOACK := map[string]string{"blksize": "1468"}; !maps.Equal(oack, wantOACK) {
		t.Fatalf("atftp saw OACK %v, want %v", oack, wantOACK)
	}
	if r := ts.result(t); r.err != nil || r.blksize != 1468 || r.windowsize != 1 {
		t.Fatalf("server: %v, blksize %d, windowsize %d; want 1468 and 1", r.err, r.blksize, r.windowsize)
	}
}

// TestRefusingEveryAskedOptionSendsNoOACK: with all it asked for refused,
// the client gets DATA at once, 512-byte blocks, as from a server without
// options; curl, which asks for blksize and tsize, fetches exact bytes.
func TestRefusingEveryAskedOptionSendsNoOACK(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "--refuse", "blksize", "--refuse", "tsize")
	want := ts.writeFile(t, "file", 5000)
	res, err := tftpGet(ts.addr, "file", clientOptions{blksize: 1024, tsize: true})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
	if res.oack != nil {
		t.Fatalf("OACK %v, want none", res.oack)
	}
	if r := ts.result(t); r.err != nil || r.blksize != 512 {
		t.Fatalf("server: %v, blksize %d; want 512", r.err, r.blksize)
	}
	host, port := ts.addr.Addr().String(), strconv.Itoa(int(ts.addr.Port()))
	assertSame(t, fetchWithClient(t, interopCase{client: "curl", name: "curl blksize 1024",
		args: curlArgs(opRRQ, "--tftp-blksize", "1024")}, host, port, "file"), want)
	if r := ts.result(t); r.err != nil || r.blksize != 512 {
		t.Fatalf("server: %v, blksize %d; want 512", r.err, r.blksize)
	}
}

// TestRefusedTsizeOfAnUploadIsNotSeen: a WRQ's refused tsize is as if not
// sent: larger than --upload-max-size it is not refused before the data,
// and an upload within the limit lands exact without it in the OACK.
func TestRefusedTsizeOfAnUploadIsNotSeen(t *testing.T) {
	ts, dir := startUploadServer(t, "127.0.0.1", "--refuse", "tsize", "--upload-max-size", "4K")
	data := randomBytes(3000, 7)
	oack, err := tftpPut(ts.addr, "up", data, clientOptions{blksize: 1000, tsize: true})
	if err != nil {
		t.Fatal(err)
	}
	if wantOACK := map[string]string{"blksize": "1000"}; !maps.Equal(oack, wantOACK) {
		t.Fatalf("OACK %v, want %v", oack, wantOACK)
	}
	if r := ts.result(t); r.err != nil {
		t.Fatal(r.err)
	}
	assertSame(t, readFile(t, filepath.Join(dir, "up")), data)
	// Announcing 5000 bytes is not seen: the upload starts, and is stopped
	// with ERROR 3 only once its bytes pass the limit.
	oack, err = tftpPut(ts.addr, "big", randomBytes(5000, 8), clientOptions{blksize: 1000, tsize: true})
	wantWireError(t, err, codeDiskFull)
	if oack == nil {
		t.Fatal("the upload was refused before its data, as if its tsize was seen")
	}
	if r := ts.result(t); r.err == nil {
		t.Fatal("server: an upload past --upload-max-size succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "big")); !os.IsNotExist(err) {
		t.Fatalf("the refused upload left a file: %v", err)
	}
}

// TestRejectAllIsNoRFC2347: tftpd-hpa's --reject-all sends no OACK
// whatever is asked; atftp, asking for three options, gets exact bytes.
func TestRejectAllIsNoRFC2347(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "--reject-all")
	want := ts.writeFile(t, "file", 3000)
	got, oack := atftpTracedGet(t, ts, "file", "blksize 1468", "windowsize 16", "tsize 0")
	assertSame(t, got, want)
	if oack != nil {
		t.Fatalf("atftp saw OACK %v, want none", oack)
	}
	if r := ts.result(t); r.err != nil || r.blksize != 512 || r.windowsize != 1 {
		t.Fatalf("server: %v, blksize %d, windowsize %d; want 512 and 1", r.err, r.blksize, r.windowsize)
	}
}
