// What a requested name can reach, in both builds (proxy.go is in the
// noproxy build too): a cleaned name never leaves the root, and a name below
// a URL link becomes a URL below the link's base, with its query kept and
// no dot segment.
package main

import (
	"net/url"
	"strings"
	"testing"
)

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
