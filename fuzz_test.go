package main

import (
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzParseRequest: no packet may crash the parser, and what it accepts is a
// well-formed request.
func FuzzParseRequest(f *testing.F) {
	for _, seed := range [][]byte{
		rrq("file", "octet"),
		rrq("file", "netascii", "blksize", "1468", "tsize", "0", "windowsize", "16", "timeout", "3"),
		rrq("file", "OCTET", "BLKSIZE", "512", "", ""),
		append([]byte{0, opWRQ}, "up\x00octet\x00tsize\x00100\x00"...),
		{0, opRRQ, 0, 0},
		{0, 1},
		{0, opACK, 0, 1},
		[]byte("\x00\x01a\x00mail\x00"),
		[]byte("\x00\x01a\x00octet\x00odd\x00"),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		req, err := parseRequest(pkt)
		if err != nil {
			if toWireError(err).code != codeIllegalOp {
				t.Fatalf("parse error %v maps to code %d, want 4", err, toWireError(err).code)
			}
			return
		}
		if req.filename == "" || (req.op != opRRQ && req.op != opWRQ) {
			t.Fatalf("accepted a malformed request: %+v", req)
		}
		for _, o := range req.options {
			if o.name == "" || o.name != strings.ToLower(o.name) {
				t.Fatalf("option name %q not normalised", o.name)
			}
		}
	})
}

// FuzzNegotiate: whatever the client asks, the answer stays within the
// protocol's and the server's limits and never grants more than was asked.
func FuzzNegotiate(f *testing.F) {
	f.Add("blksize", "1468", "windowsize", "16", int64(1000))
	f.Add("timeout", "255", "tsize", "0", int64(-1))
	f.Add("blksize", "99999999999999999999999", "windowsize", "0", int64(5))
	f.Add("tsize", "enable", "timeout", "-1", int64(1<<40))
	f.Fuzz(func(t *testing.T, n1, v1, n2, v2 string, size int64) {
		req := &request{op: opRRQ, filename: "f", options: []option{
			{strings.ToLower(n1), v1}, {strings.ToLower(n2), v2},
		}}
		lim := negotiateLimits{maxBlksize: 1468, maxWindowsize: 64, maxWindowBytes: 98304, timeout: 3 * time.Second}
		p := negotiate(req, size, lim, func(option) {})
		if p.blksize < minBlksize || p.blksize > 1468 || p.windowsize < 1 || p.windowsize > 64 {
			t.Fatalf("out of limits: %+v", p)
		}
		if p.timeout <= 0 || p.timeout > 255*time.Second {
			t.Fatalf("timeout %v", p.timeout)
		}
		if p.oack == nil {
			return
		}
		answered := parseOACK(p.oack)
		for k, v := range answered {
			asked := ""
			for _, o := range req.options {
				if o.name == k {
					asked = o.value
					break
				}
			}
			switch k {
			case "blksize", "windowsize":
				got, _ := strconv.Atoi(v)
				want, err := strconv.Atoi(asked)
				if err != nil || got > want {
					t.Fatalf("%s %s answered to %q", k, v, asked)
				}
			case "timeout":
				if v != asked {
					t.Fatalf("timeout %q answered to %q", v, asked)
				}
			case "tsize":
				if v != strconv.FormatInt(size, 10) {
					t.Fatalf("tsize %s, size %d", v, size)
				}
			default:
				t.Fatalf("unasked option %q in OACK", k)
			}
		}
	})
}

// FuzzCleanRequestPath: no name leaves the root.
func FuzzCleanRequestPath(f *testing.F) {
	for _, s := range []string{"a/b", "/etc/passwd", "../x", "a/../../b", "./a//b/", `a\..\b`, "..", "...", "a/.."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		rel, err := cleanRequestPath(name)
		if err != nil {
			return
		}
		if strings.HasPrefix(rel, "/") {
			t.Fatalf("%q became absolute %q", name, rel)
		}
		for _, part := range strings.Split(rel, "/") {
			if part == ".." || part == "." || (part == "" && rel != "") {
				t.Fatalf("%q became %q", name, rel)
			}
		}
	})
}

// FuzzProxyURL: whatever a request names below a URL link, the URL asked
// for stays below the link's base, keeps its query and has no dot segment.
func FuzzProxyURL(f *testing.F) {
	for _, s := range []string{"a/b", "a?x=1", "a#f", "%2e%2e/x", "..%2f..%2fx", "a%2F..", "sp ace/100%", "\xff", `a\b`, "./a//b"} {
		f.Add("http+nocache://h:8080/base/dir?k=v", s)
	}
	f.Add("https://h/", "x/y")
	f.Add("http+nocompress+nocache://h", "file")
	f.Fuzz(func(t *testing.T, link, name string) {
		rt, err := parseProxyURL(link, func(string) {})
		if err != nil {
			return
		}
		rel, err := cleanRequestPath(name)
		if err != nil || rel == "" {
			return
		}
		base := rt.url
		got, err := url.Parse(rt.below(strings.Split(rel, "/")).url.String())
		if err != nil {
			t.Fatalf("%q below %q: unparsable URL: %v", name, link, err)
		}
		if got.Scheme != base.Scheme || got.Host != base.Host || got.RawQuery != base.RawQuery || got.Fragment != "" {
			t.Fatalf("%q below %q became %q", name, link, got)
		}
		prefix := strings.TrimSuffix(base.EscapedPath(), "/") + "/"
		if !strings.HasPrefix(got.EscapedPath(), prefix) {
			t.Fatalf("%q below %q left the base: %q", name, link, got.EscapedPath())
		}
		added := strings.Split(strings.TrimPrefix(got.EscapedPath(), prefix), "/")
		if len(added) != len(strings.Split(rel, "/")) {
			t.Fatalf("%q below %q: %d segments from %d names", name, link, len(added), len(strings.Split(rel, "/")))
		}
		for _, seg := range added {
			if decoded, err := url.PathUnescape(seg); err != nil || decoded == "." || decoded == ".." || strings.Contains(decoded, "/") {
				t.Fatalf("%q below %q: segment %q", name, link, seg)
			}
		}
	})
}
