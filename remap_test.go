// --map-file behaves as tftpd-hpa's rules do: the rules parse as
// common/remap.c parses them, each operation and escape maps a name as
// documented, runaway rules stop, mistakes name their line, the shipped rule
// files map what they say, and in.tftpd itself, run side by side, agrees on
// every request except where the differences are pinned down. r-tftpd's
// extension \m (the client's MAC address) fires only when the MAC is known,
// which is looked up only for rules that have it. Reloads by SIGHUP take
// effect and race with nothing.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// debianSampleRules is tftpd-hpa's examples/sample.rules as Debian ships it.
const debianSampleRules = `#
# Sample rule file for the -m (remapping option)
#
ri	^[a-z]:				# Remove "drive letters"
rg	\\		/		# Convert backslashes to slashes
rg	\#		@		# Convert hash marks to @ signs
rg	/../		/..no../	# Convert /../ to /..no../
e	^ok/				# These are always ok
r	^[^/]		/tftpboot/\0	# Convert non-absolute files
a	\.pvt$				# Reject requests for private files
`

var (
	client4 = newMapClient(netip.MustParseAddr("192.0.2.169"))
	client6 = newMapClient(netip.MustParseAddr("2001:db8::1"))
)

func mustRules(t testing.TB, text string) *remapRules {
	t.Helper()
	rs, err := parseRemapRules("test.rules", text)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestRemapReadsTftpdHpaSample(t *testing.T) {
	rs := mustRules(t, debianSampleRules)
	if len(rs.rules) != 7 {
		t.Fatalf("%d rules, want 7", len(rs.rules))
	}
	for _, c := range []struct{ in, want string }{
		{`C:\Boot\BCD`, "/Boot/BCD"},
		{`Boot\BCD`, "/tftpboot/Boot/BCD"},
		{`boot\x64\wdsnbp.com`, "/tftpboot/boot/x64/wdsnbp.com"},
		{"ok/file", "ok/file"},
		{"a#b", "/tftpboot/a@b"},
		{"/x/../y", "/x/..no../y"},
	} {
		got, err := rs.mapName(c.in, opRRQ, client4, nil)
		if err != nil || got != c.want {
			t.Errorf("%q: %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	if _, err := rs.mapName("secret.pvt", opRRQ, client4, nil); toWireError(err).code != codeAccess {
		t.Errorf("secret.pvt: %v, want ERROR 2", err)
	}
}

// TestMapNameOperationsAndEscapes covers each operation letter and each
// replacement escape on its own.
func TestMapNameOperationsAndEscapes(t *testing.T) {
	for _, c := range []struct {
		rules, in string
		op        uint16
		client    mapClient
		want      string
		code      int // ERROR code wanted instead of a name; -1 for none
	}{
		{`r a b`, "aaa", opRRQ, client4, "baa", -1},
		{`rg a b`, "aaa", opRRQ, client4, "bbb", -1},
		{`r A b`, "aaa", opRRQ, client4, "aaa", -1},
		{`ri A b`, "aaa", opRRQ, client4, "baa", -1},
		{"re ^a x\nr x y", "a", opRRQ, client4, "x", -1},
		{"r ^a x\nr x y", "a", opRRQ, client4, "y", -1},
		{"r ^b x\nrs ^a b", "a", opRRQ, client4, "x", -1}, // s starts over at the very first rule
		{"a \\.pvt$", "k.pvt", opRRQ, client4, "", codeAccess},
		{"a \\.pvt$ \\0\\ is\\ private", "k.pvt", opRRQ, client4, "", codeAccess},
		{"a~ ^pub/", "priv/x", opRRQ, client4, "", codeAccess},
		{"a~ ^pub/", "pub/x", opRRQ, client4, "pub/x", -1},
		{"e~ ^keep\nr .* gone", "other", opRRQ, client4, "other", -1},
		{"e~ ^keep\nr .* gone", "keep", opRRQ, client4, "gone", -1},
		{`rG ^f$ get`, "f", opRRQ, client4, "get", -1},
		{`rG ^f$ get`, "f", opWRQ, client4, "f", -1},
		{`rP ^f$ put`, "f", opWRQ, client4, "put", -1},
		{`rP ^f$ put`, "f", opRRQ, client4, "f", -1},
		{`rGP ^f$ put`, "f", opRRQ, client4, "f", -1}, // with both G and P, neither (6.0; in 5.2 the last won)
		{`r4 ^f$ v4`, "f", opRRQ, client4, "v4", -1},
		{`r4 ^f$ v4`, "f", opRRQ, client6, "f", -1},
		{`r6 ^f$ v6`, "f", opRRQ, client6, "v6", -1},
		{`r46 ^f$ both`, "f", opRRQ, client6, "f", -1},
		{`r ^f$ \i`, "f", opRRQ, client4, "192.0.2.169", -1},
		{`r ^f$ \x`, "f", opRRQ, client4, "C00002A9", -1},
		{`r ^f$ \i`, "f", opRRQ, client6, "2001:db8::1", -1},
		{`r ^f$ \x`, "f", opRRQ, client6, "20010DB8000000000000000000000001", -1},
		{`r ^(a)(b)(c)(d)(e)(f)(g)(h)(i)$ \9\8\7\6\5\4\3\2\1-\0`, "abcdefghi", opRRQ, client4, "ihgfedcba-abcdefghi", -1},
		{`r ^(x)|(y)$ [\1][\2]`, "y", opRRQ, client4, "[][y]", -1},
		{`r ^(.*)$ \U\1\E-\L\1-\1`, "Mix", opRRQ, client4, "MIX-mix-mix", -1},
		{`r ^f$ \Ux\i`, "f", opRRQ, client6, "X2001:DB8::1", -1},
		{`r ^f$ a\\b\ c\#d\qe`, "f", opRRQ, client4, `a\b c#dqe`, -1},
		{`r a|ab X`, "abc", opRRQ, client4, "Xc", -1},  // leftmost-longest, as POSIX
		{`r [\\]x y`, `a\x`, opRRQ, client4, "ay", -1}, // a backslash in a list is itself
		{`rg [\.] _`, `a.b\c`, opRRQ, client4, "a_b_c", -1},
		{`r []x]+ _`, "a]x]b", opRRQ, client4, "a_b", -1},
		{`rg \w+ .`, "ab-cd_1", opRRQ, client4, ".-.", -1},
		{`rg \W _`, "a-b", opRRQ, client4, "a_b", -1},
		{`r \S+$ _`, "a b", opRRQ, client4, "a _", -1},
		{`rg \s _`, "a b\tc", opRRQ, client4, "a_b_c", -1},
		{`r \d D`, "1d", opRRQ, client4, "1D", -1}, // glibc: \d is the letter d
		{`r ^a.c$ ok`, "a\nc", opRRQ, client4, "ok", -1},
		{`r b$ ok`, "ab\n", opRRQ, client4, "ab\n", -1},
		{`r a*? X`, "aab", opRRQ, client4, "Xb", -1}, // (a*)? in ERE, never lazy
		{`r ^[[:upper:]]+ U`, "ABc", opRRQ, client4, "Uc", -1},
		{"r \xff X", "a\xffb", opRRQ, client4, "aXb", -1}, // bytes, as in the C locale
		{`r ^a.b$ X`, "a\xc3\xa9b", opRRQ, client4, "a\xc3\xa9b", -1},
		{`ri [^a]+ X`, "aAbB", opRRQ, client4, "aAX", -1},
		{`r [[=a=][.b.]]+ X`, "abc", opRRQ, client4, "Xc", -1},
		{`r a{2}b{1,}c{,2} X`, "aabbc{,2}", opRRQ, client4, "X{,2}", -1}, // glibc: {,2} is {0,2}
		{"r (a*)*b [\\1]", "b", opRRQ, client4, "[]", -1},
	} {
		rs := mustRules(t, c.rules)
		got, err := rs.mapName(c.in, c.op, c.client, nil)
		switch {
		case c.code >= 0:
			if err == nil || int(toWireError(err).code) != c.code {
				t.Errorf("%q on %q: %q, %v; want ERROR %d", c.rules, c.in, got, err, c.code)
			}
		case err != nil || got != c.want:
			t.Errorf("%q on %q: %q, %v; want %q", c.rules, c.in, got, err, c.want)
		}
	}
}

func TestMapNameAbortMessage(t *testing.T) {
	rs := mustRules(t, `a \.pvt$ \0\ files\ are\ private\ (\i)`)
	_, err := rs.mapName("key.pvt", opRRQ, client4, nil)
	we := toWireError(err)
	if we.code != codeAccess || we.msg != ".pvt files are private (192.0.2.169)" {
		t.Fatalf("got ERROR %d %q", we.code, we.msg)
	}
	rs = mustRules(t, `a \.pvt$`)
	if _, err := rs.mapName("key.pvt", opRRQ, client4, nil); !errors.Is(err, errMapRefused) {
		t.Fatalf("got %v, want %v", err, errMapRefused)
	}
}

// TestMapNameMACEscape: \m is the client's MAC address, lowercase, bytes
// joined by "-" (pxelinux's per-client name), folded by \U like any text; a
// rule with \m (a rewrite, a refusal's message, a jump's label) does not
// fire for a client whose MAC is unknown, and the rules after it run as if
// it were not there; \\m is a backslash and an m, as in tftpd-hpa.
func TestMapNameMACEscape(t *testing.T) {
	withMAC := client4
	withMAC.mac = "02-42-c0-00-02-07"
	for _, c := range []struct {
		rules, in string
		client    mapClient
		want      string
		code      int // ERROR code wanted instead of a name; -1 for none
	}{
		{`r ^pxelinux.cfg/default$ pxelinux.cfg/01-\m`, "pxelinux.cfg/default", withMAC, "pxelinux.cfg/01-02-42-c0-00-02-07", -1},
		{`r ^pxelinux.cfg/default$ pxelinux.cfg/01-\m`, "pxelinux.cfg/default", client4, "pxelinux.cfg/default", -1},
		{`r ^pxelinux.cfg/default$ pxelinux.cfg/01-\m`, "pxelinux.cfg/default", client6, "pxelinux.cfg/default", -1},
		{`r ^f$ \U\m`, "f", withMAC, "02-42-C0-00-02-07", -1},
		{`r ^f$ \\m`, "f", client4, `\m`, -1},
		{"re ^f$ \\m\nr ^f$ fallback", "f", client4, "fallback", -1},
		{`a ^f$ \m`, "f", client4, "f", -1},
		{`a ^f$ \m`, "f", withMAC, "", codeAccess},
		{"j ^f$ mac-\\m\ne ^\n:mac-02-42-c0-00-02-07\nr ^ by-mac/", "f", withMAC, "by-mac/f", -1},
		{"j ^f$ mac-\\m\ne ^\n:mac-02-42-c0-00-02-07\nr ^ by-mac/", "f", client4, "f", -1},
	} {
		rs := mustRules(t, c.rules)
		got, err := rs.mapName(c.in, opRRQ, c.client, nil)
		switch {
		case c.code >= 0:
			if err == nil || int(toWireError(err).code) != c.code {
				t.Errorf("%q on %q: %q, %v; want ERROR %d", c.rules, c.in, got, err, c.code)
			}
		case err != nil || got != c.want:
			t.Errorf("%q on %q (MAC %q): %q, %v; want %q", c.rules, c.in, c.client.mac, got, err, c.want)
		}
	}
}

// TestMACLookedUpOnlyForRulesThatUseIt: mapRequest asks for the client's
// MAC address once when a rule has \m, never otherwise, and turns the
// neighbour table's "aa:bb:..." into \m's "aa-bb-...".
func TestMACLookedUpOnlyForRulesThatUseIt(t *testing.T) {
	for _, c := range []struct {
		rules, want string
		lookups     int
	}{
		{"r ^f$ \\x-\\i", "C0000207-192.0.2.7", 0},
		{"r ^f$ \\\\m", `\m`, 0},
		{"r ^f$ 01-\\m", "01-02-42-c0-00-02-07", 1},
		{"r ^f$ \\m\nr ^(.*)$ \\1/\\m", "02-42-c0-00-02-07/02-42-c0-00-02-07", 1},
	} {
		rs := mustRules(t, c.rules)
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		table := newRemapTable("test.rules", defaultMapSteps, rs, log)
		lookups := 0
		mac := func() string { lookups++; return "02:42:c0:00:02:07" }
		got, err := table.mapRequest("f", opRRQ, netip.MustParseAddr("192.0.2.7"), mac, nil, log)
		if err != nil || got != c.want || lookups != c.lookups {
			t.Errorf("%q: %q, %v after %d lookups; want %q after %d", c.rules, got, err, lookups, c.want, c.lookups)
		}
	}
}

// TestMapTestShowsMACRules: --map-test-mac gives --map-test's client a MAC
// address, in any of the forms a MAC is written, so that \m rules show what
// they map to; without it they do not fire. A value that is no 6-byte MAC
// is a startup error.
func TestMapTestShowsMACRules(t *testing.T) {
	dir := t.TempDir()
	rules, names := filepath.Join(dir, "map.rules"), filepath.Join(dir, "names")
	os.WriteFile(rules, []byte("r ^pxelinux.cfg/default$ pxelinux.cfg/01-\\m\n"), 0o644)
	os.WriteFile(names, []byte("pxelinux.cfg/default\nother\n"), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "ok\tpxelinux.cfg/default\nok\tother\n"},
		{[]string{"--map-test-mac", "02:42:C0:00:02:07"}, "ok\tpxelinux.cfg/01-02-42-c0-00-02-07\nok\tother\n"},
		{[]string{"--map-test-mac", "02-42-c0-00-02-07"}, "ok\tpxelinux.cfg/01-02-42-c0-00-02-07\nok\tother\n"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(append([]string{"-r", dir, "--map-file", rules, "--map-test", names}, c.args...), &stdout, &stderr)
		if code != 0 || stdout.String() != c.want {
			t.Errorf("%q: exit %d, stdout %q, want %q; stderr %s", c.args, code, stdout.String(), c.want, stderr.String())
		}
	}
	for _, mac := range []string{"02:42:c0:00:02", "02:42:c0:00:02:07:08:09", "nope"} {
		var stdout, stderr bytes.Buffer
		want := "r-tftpd: --map-test-mac \"" + mac + "\": not a MAC address (such as 02:00:5e:10:00:01) (see --help)\n"
		if code := run([]string{"--map-file", rules, "--map-test", names, "--map-test-mac", mac}, &stdout, &stderr); code != 2 || stderr.String() != want {
			t.Errorf("--map-test-mac %q: exit %d, %q; want 2, %q", mac, code, stderr.String(), want)
		}
	}
}

// TestMapNameRunawayStops: rules that restart or grow forever end with
// ERROR 0 after the bound, never hang or grow without limit.
func TestMapNameRunawayStops(t *testing.T) {
	for _, rules := range []string{"s .", "r a b\nrs b a", "rg x x", "rg x* y", "rg a aa", "rgi A \\0\\0\\0\\0", "rg \\w+ W"} {
		_, err := mustRules(t, rules).mapName("xa", opRRQ, client4, nil)
		if !errors.Is(err, errMapRunaway) && !errors.Is(err, errMapTooLong) || toWireError(err).code != codeUndefined {
			t.Errorf("%q: %v, want ERROR 0 from the bound", rules, err)
		}
	}
	if _, err := mustRules(t, "").mapName(strings.Repeat("n", maxMappedName+1), opRRQ, client4, nil); !errors.Is(err, errMapTooLong) {
		t.Errorf("a name over %d bytes: %v", maxMappedName, err)
	}
	backslashes := mustRules(t, `rg \\ /`)
	if got, err := backslashes.mapName(strings.Repeat(`\`, 1000), opRRQ, client4, nil); err != nil || got != strings.Repeat("/", 1000) {
		t.Errorf("1000 backslashes: %v", err)
	}
	if _, err := backslashes.mapName(strings.Repeat(`\`, maxMappedName), opRRQ, client4, nil); !errors.Is(err, errMapRunaway) {
		t.Errorf("%d backslashes: %v, want the scanning bound to stop it", maxMappedName, err)
	}
}

// TestBadRulesFileNamesTheLine: each mistake is reported as FILE:LINE: why.
func TestBadRulesFileNamesTheLine(t *testing.T) {
	for _, c := range []struct{ line, why string }{
		{`r ^(a)\1 b`, `back-reference \1`},
		{`x ^a b`, "unknown operation"},
		{`r~ ^a b`, "r and ~"},
		{`r`, "no regex"},
		{`r # comment`, "no regex"},
		{`r ^(a b`, "bad regex"},
		{`r a\<b c`, `word-boundary operator \<`},
		{`r [[=ab=]] b`, "collating"},
		{`r [[:word:]] b`, "unknown character class"},
		{`r [z-a] b`, "invalid range"},
		{`r a{2,1} b`, "invalid repetition"},
		{`r a{256} b`, "over 255"},
		{`r a{99}{99} b`, "too large"},
		{`r *a b`, "nothing before it"},
		{`r a) b`, "unmatched )"},
		{`r [a b`, "unterminated ["},
		{`r a\`, "lone backslash"},
		{`r (?i)a b`, "bad regex"},
	} {
		_, err := parseRemapRules("x.rules", "# fine\nr ^ok$ ok\n\n"+c.line+"\nr ^later$ x\n")
		var fe *remapFileError
		if !errors.As(err, &fe) || fe.line != 4 || !strings.HasPrefix(err.Error(), "x.rules:4: ") || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%q: %v; want x.rules:4: ...%s...", c.line, err, c.why)
		}
	}
	_, err := loadRemapRules("/nonexistent/map")
	if err == nil || err.Error() != "/nonexistent/map: no such file or directory" {
		t.Errorf("missing file: %v", err)
	}
}

// TestShippedRuleFiles: the contrib/map-files examples map what they say.
func TestShippedRuleFiles(t *testing.T) {
	windows, err := loadRemapRules("contrib/map-files/windows.rules")
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{
		`\Boot\BCD`:                      "Boot/BCD",
		`C:\boot\bcd`:                    "Boot/BCD",
		`\boot\x64\wdsnbp.com`:           "Boot/x64/wdsnbp.com",
		`Boot\X64\PXEBOOT.N12`:           "Boot/x64/pxeboot.n12",
		`\Boot\x64\bootmgr.exe`:          "Boot/x64/bootmgr.exe",
		`\Boot\Fonts\WGL4_BOOT.TTF`:      "Boot/Fonts/wgl4_boot.ttf",
		`\BOOT\BOOT.SDI`:                 "Boot/boot.sdi",
		`\Sources\Boot.wim`:              "sources/boot.wim",
		"/pxelinux.0":                    "pxelinux.0",
		"pxelinux.cfg/01-aa-bb-cc-dd-ee": "pxelinux.cfg/01-aa-bb-cc-dd-ee",
	} {
		if got, err := windows.mapName(in, opRRQ, client4, nil); err != nil || got != want {
			t.Errorf("windows.rules: %q -> %q, %v; want %q", in, got, err, want)
		}
	}
	perClient, err := loadRemapRules("contrib/map-files/per-client.rules")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ in, client, want string }{
		{"pxelinux.cfg/default", "192.0.2.10", "pxelinux.cfg/C000020A"},
		{"pxelinux.cfg/default", "192.0.2.19", "pxelinux.cfg/C0000213"},
		{"pxelinux.cfg/default", "192.0.2.20", "pxelinux.cfg/default"},
		{"pxelinux.cfg/default", "2001:db8::10", "pxelinux.cfg/default"},
		{"boot.ipxe", "192.0.2.15", "clients/192.0.2.15.ipxe"},
		{"boot.ipxe", "192.0.2.150", "boot.ipxe"},
		{"boot.ipxe", "2001:db8::1f", "clients/2001:db8::1f.ipxe"},
		{"boot.ipxe", "2001:db8::20", "boot.ipxe"},
		{"undionly.kpxe", "192.0.2.15", "undionly.kpxe"},
	} {
		got, err := perClient.mapName(c.in, opRRQ, newMapClient(netip.MustParseAddr(c.client)), nil)
		if err != nil || got != c.want {
			t.Errorf("per-client.rules: %q from %s -> %q, %v; want %q", c.in, c.client, got, err, c.want)
		}
	}
	if _, err := perClient.mapName("clients/192.0.2.15.ipxe", opRRQ, client4, nil); toWireError(err).code != codeAccess {
		t.Errorf("a direct request for a client's file: %v, want ERROR 2", err)
	}
	efiOrBIOS, err := loadRemapRules("contrib/map-files/efi-or-bios.rules")
	if err != nil {
		t.Fatal(err)
	}
	servable := map[string]bool{"boot/grub.efi": true, "boot/grub.bin": true, "boot/memtest.bin": true}
	for _, c := range []struct {
		in   string
		op   uint16
		want string // or the ERROR code
		code int
	}{
		{"boot/grub", opRRQ, "boot/grub.efi", -1},
		{`boot\memtest`, opRRQ, "boot/memtest.bin", -1},
		{"boot/other", opRRQ, "boot/other", -1},
		{"boot/grub.cfg", opRRQ, "boot/grub.cfg", -1},
		{`\\pxelinux.0`, opRRQ, "//pxelinux.0", -1},
		{"boot/grub", opWRQ, "", codeAccess},
		{"logs/boot", opWRQ, "logs/boot", -1},
	} {
		got, err := efiOrBIOS.mapName(c.in, c.op, client4, func(name string) bool { return servable[name] })
		if c.code >= 0 && toWireError(err).code != uint16(c.code) || c.code < 0 && (err != nil || got != c.want) {
			t.Errorf("efi-or-bios.rules: %q (op %d) -> %q, %v; want %q or ERROR %d", c.in, c.op, got, err, c.want, c.code)
		}
	}
}

// TestMappedNameIsCleanedLikeAnyName: what a rule produces cannot reach
// outside the root, and a v4-mapped client address counts as IPv4.
func TestMappedNameIsCleanedLikeAnyName(t *testing.T) {
	rules := filepath.Join(t.TempDir(), "escape.rules")
	os.WriteFile(rules, []byte("r ^up$ ../secret\nr ^abs$ /etc/passwd\nr ^inside$ //./sub/../sub/f\nr ^empty$\n"), 0o644)
	ts := startServer(t, "127.0.0.1", "--map-file", rules)
	os.WriteFile(filepath.Join(filepath.Dir(ts.root), "secret"), []byte("outside"), 0o644)
	want := ts.writeFile(t, "etc/passwd", 700)
	for _, c := range []struct {
		name string
		code uint16
	}{{"up", codeAccess}, {"inside", codeAccess}, {"empty", codeNotFound}} {
		_, err := tftpGet(ts.addr, c.name, clientOptions{})
		var we *wireError
		if !errors.As(err, &we) || we.code != c.code {
			t.Fatalf("%s: %v, want ERROR %d", c.name, err, c.code)
		}
		ts.result(t)
	}
	res, err := tftpGet(ts.addr, "abs", clientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
	if r := ts.result(t); r.file != "abs" || r.mapped != "/etc/passwd" {
		t.Fatalf("report names %q mapped to %q", r.file, r.mapped)
	}
	if c := newMapClient(netip.MustParseAddr("::ffff:10.0.0.1")); !c.v4 || c.ip != "10.0.0.1" || c.hx != "0A000001" {
		t.Fatalf("v4-mapped client: %+v", c)
	}
}

// remapBenchRules is a rules file of the usual size: Windows names, per-client
// files, refusals.
const remapBenchRules = `
rg	\\				/
ri	^[a-z]:
r	^/+
ri	^boot/				Boot/
ri	^Boot/fonts/			Boot/Fonts/
ri	^Boot/(x86|x64|arm64|ia64)/	Boot/\L\1\E/
ri	^sources/			sources/
ri	^Boot/bcd$			Boot/BCD
ri	^(Boot/([^/]+/)*)([^/]+\.(com|n12|exe|efi|sdi|ttf))$	\1\L\3
ri	^sources/([^/]+\.wim)$		sources/\L\1
rG	^pxelinux\.cfg/default$		pxelinux.cfg/default@\x
re	^pxelinux\.cfg/default@(C000020[A-F]|C000021[0-3])$	pxelinux.cfg/\1
r	^pxelinux\.cfg/default@.*$	pxelinux.cfg/default
r	^boot\.ipxe$			boot.ipxe@\i
4re	^boot\.ipxe@(192\.0\.2\.(1[0-9]))$	clients/\1.ipxe
6re	^boot\.ipxe@(2001:db8::1[0-9a-f]?)$	clients/\1.ipxe
r	^boot\.ipxe@.*$			boot.ipxe
a	^clients/
a	\.pvt$
rg	\#				@
`

// BenchmarkMapName is the cost of mapping per request with a 20-rule file.
func BenchmarkMapName(b *testing.B) {
	rs := mustRules(b, remapBenchRules)
	if len(rs.rules) != 20 {
		b.Fatalf("%d rules", len(rs.rules))
	}
	for _, name := range []string{`\Boot\x64\WDSNBP.COM`, "pxelinux.cfg/default", "vmlinuz"} {
		b.Run(strings.NewReplacer(`\`, "_", "/", "_").Replace(name), func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				if _, err := rs.mapName(name, opRRQ, client4, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMapNameRunaway is the worst a request can cost: a rule set that
// grows or restarts until a bound stops it.
func BenchmarkMapNameRunaway(b *testing.B) {
	for _, rules := range []string{"rg a aa", "s ^", "rg \\\\ /"} {
		rs := mustRules(b, rules)
		name := "a"
		if strings.Contains(rules, "/") {
			name = strings.Repeat(`\`, maxMappedName)
		}
		b.Run(rules, func(b *testing.B) {
			for range b.N {
				rs.mapName(name, opRRQ, client4, nil)
			}
		})
	}
}

func FuzzParseRules(f *testing.F) {
	for _, seed := range []string{
		debianSampleRules, remapBenchRules, "r a b", "a~ [[:alpha:]] \\0", "r [\\]] x\\ y # c",
		"r ^(a)\\1 b", "6P4Ge [ x", "rg \\w+ \\U\\0", "r a{2,} b\r\n", "r [[.a.]] b",
		"r [[:" + strings.Repeat("x", 500) + ":]] b", "r a" + strings.Repeat("*", 2000) + " b",
		":l\nj ^ l", "j ^(.) \\1\n:a", "rgg x* -", "sj ^ l\n:l", "rEG ^(.*)$ \\1.efi", ":\n", ":a\n:a",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, text string) {
		rs, err := parseRemapRules("f.rules", text)
		if err != nil {
			var fe *remapFileError
			if !errors.As(err, &fe) || fe.line < 1 || !strings.HasPrefix(err.Error(), "f.rules:") || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q does not name a line", err)
			}
			if len(err.Error()) > 400 {
				t.Fatalf("error of %d bytes: %.80q...", len(err.Error()), err)
			}
			return
		}
		for _, r := range rs.rules {
			if r.re == nil || r.line < 1 || (r.rewrite && r.inverse) || r.target < -1 || r.target > len(rs.rules) {
				t.Fatalf("bad rule %+v", r)
			}
		}
		for label, at := range rs.labels {
			if label == "" || at < 0 || at > len(rs.rules) {
				t.Fatalf("label %q at rule %d of %d", label, at, len(rs.rules))
			}
		}
	})
}

// FuzzMapName runs any rules file on any name, as a read or a write, with
// "E" finding every name of an even length servable: the mapping ends
// within --map-steps (every rule tried, repeat, jump and "E" check counted)
// with a name below the root or an ERROR 0 or 2.
func FuzzMapName(f *testing.F) {
	f.Add(debianSampleRules, `C:\Boot\BCD`, false, false)
	f.Add(remapBenchRules, "pxelinux.cfg/default", true, false)
	f.Add("rg a aa", "aaaa", false, false)
	f.Add("r .* ../\\0", "x", false, false)
	f.Add("rs ^a b\nr ^b a", "a", true, false)
	f.Add("r ^ /..//", "etc", false, false)
	f.Add(":top\nrgg (.) ..\\1\nj ^ top", "ab", false, false)
	f.Add("~j ^x end\nrggE x* /../\nrE ^(.*)$ \\1.efi\n:end\nj ^(a|b) l_\\1\n:l_a\nr ^ ../", "a", false, true)
	f.Fuzz(func(t *testing.T, rules, name string, v6, write bool) {
		rs, err := parseRemapRules("f.rules", rules)
		if err != nil || name == "" {
			return
		}
		client, op := client4, uint16(opRRQ)
		if v6 {
			client = client6
		}
		if write {
			op = opWRQ
		}
		rs.steps = 64
		checks := 0
		servable := func(name string) bool { checks++; return len(name)%2 == 0 }
		mapped, err := rs.mapName(name, op, client, servable)
		if checks > rs.steps {
			t.Fatalf("%d E checks within %d steps", checks, rs.steps)
		}
		if err != nil {
			if we := toWireError(err); we.code != codeAccess && we.code != codeUndefined {
				t.Fatalf("mapping failed with ERROR %d %q", we.code, we.msg)
			}
			return
		}
		if len(mapped) > maxMappedName {
			t.Fatalf("mapped name of %d bytes", len(mapped))
		}
		rel, err := cleanRequestPath(mapped)
		if err != nil {
			return
		}
		if root := "/srv/tftp"; !strings.HasPrefix(filepath.Join(root, rel)+"/", root+"/") {
			t.Fatalf("%q maps to %q, outside the root", name, rel)
		}
	})
}

// needInTftpd finds Debian's tftpd-hpa server: $TFTPD_HPA, else in.tftpd on
// PATH when that is tftpd-hpa's (atftpd installs one of its own). It chroots
// into the tree it serves, so it needs root. Under CI=true a missing one
// fails the test.
func needInTftpd(t *testing.T) string {
	t.Helper()
	path := os.Getenv("TFTPD_HPA")
	if path == "" {
		path, _ = exec.LookPath("in.tftpd")
	}
	why := ""
	if _, err := os.Stat(path); path == "" || err != nil {
		why = "in.tftpd (tftpd-hpa) not found: set TFTPD_HPA"
	} else if missing := missingLibraries(path); missing != "" {
		why = path + " cannot start: " + missing + " not found (a package unpacked with dpkg -x brings no dependencies: install the one that has it)"
	} else if version, _ := exec.Command(path, "-V").CombinedOutput(); !strings.Contains(string(version), "tftp-hpa") {
		why = path + " is not tftpd-hpa's in.tftpd: set TFTPD_HPA"
	} else if os.Geteuid() != 0 {
		why = "in.tftpd -s needs root to chroot"
	}
	if why != "" {
		if os.Getenv("CI") == "true" {
			t.Fatal(why + " (CI=true)")
		}
		t.Skip(why)
	}
	return path
}

// missingLibraries lists the shared libraries the dynamic loader cannot
// find for the program at path, as ldd reports them ("libwrap.so.0 => not
// found"), or "" when there are none or ldd cannot tell.
func missingLibraries(path string) string {
	out, _ := exec.Command("ldd", path).Output()
	var missing []string
	for _, line := range strings.Split(string(out), "\n") {
		if lib, ok := strings.CutSuffix(strings.TrimSpace(line), " => not found"); ok {
			missing = append(missing, lib)
		}
	}
	return strings.Join(missing, ", ")
}

// startInTftpd runs in.tftpd in the foreground on a free loopback port of
// listen, serving root with the rules file, and stops it and every child
// it forked when the test ends.
func startInTftpd(t *testing.T, bin string, listen netip.Addr, rules, root string) netip.AddrPort {
	t.Helper()
	probe, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(listen, 0)))
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.LocalAddr().(*net.UDPAddr).AddrPort()
	probe.Close()
	cmd := exec.Command(bin, "--foreground", "--secure", "--user", "root", "--address", addr.String(), "--map-file", rules, root)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		if out.Len() > 0 {
			t.Logf("in.tftpd: %s", out.String())
		}
	})
	return addr
}

// fetchOutcome is what a server answered: the bytes, or an ERROR.
type fetchOutcome struct {
	data []byte
	err  *wireError
}

func (o fetchOutcome) String() string {
	if o.err != nil {
		return fmt.Sprintf("ERROR %d %q", o.err.code, o.err.msg)
	}
	return fmt.Sprintf("%d bytes %q", len(o.data), o.data[:min(len(o.data), 40)])
}

func fetchFrom(t *testing.T, server netip.AddrPort, from netip.Addr, name string) fetchOutcome {
	t.Helper()
	res, err := tftpGet(server, name, clientOptions{local: from, retry: 100 * time.Millisecond, maxRetries: 50})
	var we *wireError
	if errors.As(err, &we) {
		return fetchOutcome{err: we}
	}
	if err != nil {
		t.Fatalf("%s from %s: %v", name, from, err)
	}
	return fetchOutcome{data: res.data}
}

// sameOutcome: the same bytes, or ERRORs with the same code (the texts of
// tftpd-hpa's errors are its own).
func sameOutcome(a, b fetchOutcome) bool {
	if a.err != nil || b.err != nil {
		return a.err != nil && b.err != nil && a.err.code == b.err.code
	}
	return bytes.Equal(a.data, b.data)
}

// oracleRuleFiles are the rule files the oracle test serves with both
// servers; between them every operation letter and every escape.
var oracleRuleFiles = []struct {
	name, rules string // rules, or the name of a file in contrib/map-files
	requests    []string
}{
	{"windows.rules", "", []string{`\Boot\BCD`, `C:\boot\bcd`, `\boot\x64\WDSNBP.COM`, `Boot\X64\PXEBOOT.N12`,
		`\\Boot\\Fonts\\WGL4_BOOT.TTF`, `\Sources\Boot.wim`, "/pxelinux.0"}},
	{"per-client.rules", "", []string{"pxelinux.cfg/default", "boot.ipxe", "clients/127.0.0.1.ipxe", "undionly.kpxe"}},
	{"sample", "ri\t^[a-z]:\t\t# drive letters\nrg\t\\\\\t/\nrg\t\\#\t@\ne\t^ok/\nr\t^[^/]\t/\\0\na\t\\.pvt$\n",
		[]string{`C:\Boot\BCD`, `c:\boot\bcd`, `\Boot\BCD`, "ok/x", "ok/k.pvt", "dir#1", "k.pvt", "plain", "/plain"}},
	{"escapes", `r ^ip$ by-ip/\i
r ^hex$ by-hex/\x
r ^up/(.*)$ \U\1\E-x
r ^low/(.*)$ \L\1-X\i
r ^swap/([a-z]+)-([a-z]+)$ \2\ \1
r ^hash$ a\#b # a comment
r ^bs$ a\\b
r ^whole/.*$ w-\0
r ^grp/(a)(b)(c)(d)(e)(f)(g)(h)(i)$ \9\8\7\6\5\4\3\2\1
r ^q$ \q
`, []string{"ip", "hex", "up/abc", "low/ABC", "swap/ab-cd", "hash", "bs", "whole/f", "grp/abcdefghi", "q"}},
	{"operations", `rG ^getonly$ g
rP ^getonly$ p
r4 ^fam$ four
r6 ^fam$ six
ri ^CASE$ case
re ^stop$ a
r ^a$ b
rs ^s1$ s2
r ^s2$ s3
rg o 0
a~ ^[a-z0-9./]+$
e~ ^k
r ^keep$ kept
`, []string{"getonly", "fam", "case", "CASE", "Case", "stop", "a", "s1", "foo", "Zed", "zed", "keep"}},
	{"regex", `re ^1(a|ab) <\1>
re ^2[\\]x y
rg ^3([^.]*)[\.] 3\1_
re ^4[]k]+ K
re ^5\w+$ w-\0
re ^6n\s(.*)$ n_\1
re ^7[[:digit:]]+$ digits
re ^8(x)|^8(z) [\1][\2]
re ^9l(a|ab)(c|bcd)(d*)$ [\1][\2][\3]
re ^u.b$ one-byte
re ^v(a*)*b$ v[\1]
re ^w(a|b)*c$ w[\1]
rei ^x[^a]+$ x-not-a
re ^y[[:punct:]]{2,3}$ y-punct
re ^z{1}{2}$ z2
r ^0 zero-
r \d D
`, []string{"1abc", `2\x`, `3a.b\c`, "4k]k]z", "5under_score9", "5a-b", "6n tab", "72026", "8x", "8z", "9labcd", "0dd",
		"u\xc3\xa9b", "uxb", "vb", "vaab", "wababc", "xbBc", "xbAc", "y!#", "y!#$%", "zz", "z{1}{2}"}},
}

// TestMapFileMatchesTftpdHpa: for every rule file, request and client
// address (IPv4 127.0.0.1 and 127.0.0.2, IPv6 ::1), r-tftpd serves the same
// bytes as Debian's in.tftpd --map-file does from the same tree, or the
// same ERROR code.
func TestMapFileMatchesTftpdHpa(t *testing.T) {
	bin := needInTftpd(t)
	families := []struct {
		listen  netip.Addr
		clients []netip.Addr
	}{
		{netip.MustParseAddr("127.0.0.1"), []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")}},
		{netip.MustParseAddr("::1"), []netip.Addr{netip.MustParseAddr("::1")}},
	}
	checked, served := 0, 0
	for _, rf := range oracleRuleFiles {
		t.Run(rf.name, func(t *testing.T) {
			if rf.rules == "" {
				text, err := os.ReadFile(filepath.Join("contrib/map-files", rf.name))
				if err != nil {
					t.Fatal(err)
				}
				rf.rules = string(text)
			}
			dir := t.TempDir()
			rulesPath := filepath.Join(dir, "map.rules")
			if err := os.WriteFile(rulesPath, []byte(rf.rules), 0o644); err != nil {
				t.Fatal(err)
			}
			rules := mustRules(t, rf.rules)
			root := filepath.Join(dir, "root")
			// Every name the rules lead to is a file of its own bytes, so a
			// different mapping shows as different bytes, not as two ERROR 1s.
			for _, fam := range families {
				for _, client := range fam.clients {
					for _, name := range rf.requests {
						mapped, err := rules.mapName(name, opRRQ, newMapClient(client), nil)
						rel, cerr := cleanRequestPath(mapped)
						if err != nil || cerr != nil || rel == "" {
							continue
						}
						writeTreeFile(t, root, rel, []byte("file "+rel+"\n"))
					}
				}
			}
			writeTreeFile(t, root, "unmapped", []byte("unmapped\n"))
			for _, fam := range families {
				hpa := startInTftpd(t, bin, fam.listen, rulesPath, root)
				ours := startServer(t, fam.listen.String(), "-r", root, "--map-file", rulesPath)
				for _, client := range fam.clients {
					for _, name := range rf.requests {
						want := fetchFrom(t, hpa, client, name)
						got := fetchFrom(t, ours.addr, client, name)
						if !sameOutcome(got, want) {
							t.Errorf("%q from %s: r-tftpd %v, tftpd-hpa %v", name, client, got, want)
						}
						t.Logf("%q from %s: %v", name, client, got)
						checked++
						if got.err == nil {
							served++
						}
					}
				}
			}
		})
	}
	t.Logf("%d requests checked against tftpd-hpa, %d of them served a file", checked, served)
}

func writeTreeFile(t *testing.T, root, rel string, data []byte) {
	t.Helper()
	path := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestMapFileDifferencesFromTftpdHpa pins down each place where r-tftpd
// answers otherwise than Debian's in.tftpd (tftp-hpa 5.2) on purpose, as
// README.md lists them: both answers are checked.
func TestMapFileDifferencesFromTftpdHpa(t *testing.T) {
	bin := needInTftpd(t)
	type outcome struct {
		file string // served: the tree file with these contents
		code int    // else this ERROR code
		msg  string // and, when set, this text
	}
	for _, c := range []struct {
		why, rules, name string
		hpa, ours        outcome
	}{
		{"s starts over at the first rule, as documented; 5.2 resumes at the second",
			"r ^b$ x\nrs ^a$ b\n", "a", outcome{file: "b"}, outcome{file: "x"}},
		{"a rule set that never ends is ERROR 0, not 5.2's ERROR 2",
			"s ^loop$\ns ^loop$\n", "loop", outcome{code: 2}, outcome{code: 0}},
		{"an a rule's message is its replacement alone; 5.2 splices it into the name",
			"a \\.pvt$ private\\ \\0\n", "k.pvt", outcome{code: 2, msg: "kprivate .pvt"}, outcome{code: 2, msg: "private .pvt"}},
		{"a name with .. is refused; 5.2's chroot turns it into a name at the root",
			"r ^up$ ../b\n", "up", outcome{file: "b"}, outcome{code: 2}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			rulesPath := filepath.Join(dir, "map.rules")
			os.WriteFile(rulesPath, []byte(c.rules), 0o644)
			root := filepath.Join(dir, "root")
			for _, f := range []string{"a", "b", "x", "loop", "k.pvt", "up"} {
				writeTreeFile(t, root, f, []byte("file "+f+"\n"))
			}
			loopback := netip.MustParseAddr("127.0.0.1")
			hpa := startInTftpd(t, bin, loopback, rulesPath, root)
			ours := startServer(t, "127.0.0.1", "-r", root, "--map-file", rulesPath)
			for _, side := range []struct {
				server string
				addr   netip.AddrPort
				want   outcome
			}{{"tftpd-hpa", hpa, c.hpa}, {"r-tftpd", ours.addr, c.ours}} {
				got := fetchFrom(t, side.addr, loopback, c.name)
				w := side.want
				switch {
				case w.file != "" && (got.err != nil || string(got.data) != "file "+w.file+"\n"):
					t.Errorf("%s: %v, want file %s (%s)", side.server, got, w.file, c.why)
				case w.file == "" && (got.err == nil || int(got.err.code) != w.code || w.msg != "" && got.err.msg != w.msg):
					t.Errorf("%s: %v, want ERROR %d %q (%s)", side.server, got, w.code, w.msg, c.why)
				}
			}
		})
	}
}

// TestWindowsNamesFromRealClients: with contrib/map-files/windows.rules,
// Windows-style names from atftp, tftp-hpa and the project's client (for
// what the command-line clients cannot send) fetch the right bytes.
func TestWindowsNamesFromRealClients(t *testing.T) {
	rules, err := filepath.Abs("contrib/map-files/windows.rules")
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, "127.0.0.1", "--map-file", rules)
	files := map[string][]byte{}
	for i, f := range []string{"Boot/BCD", "Boot/boot.sdi", "Boot/x64/wdsnbp.com", "Boot/x64/pxeboot.n12",
		"Boot/x64/bootmgr.exe", "Boot/Fonts/wgl4_boot.ttf", "sources/boot.wim"} {
		files[f] = ts.writeFile(t, f, 1000+i*700)
	}
	host, port := "127.0.0.1", fmt.Sprint(ts.addr.Port())
	for _, c := range []struct {
		client interopCase
		remote string
		file   string
	}{
		{interopCase{client: "atftp", name: "atftp", args: atftpArgs(opRRQ)}, `\Boot\BCD`, "Boot/BCD"},
		{interopCase{client: "atftp", name: "atftp", args: atftpArgs(opRRQ, "blksize 1024")}, `\boot\x64\WDSNBP.COM`, "Boot/x64/wdsnbp.com"},
		{interopCase{client: "tftp", name: "tftp-hpa", args: tftpHPAArgs(opRRQ, false)}, `\Boot\BCD`, "Boot/BCD"},
		{interopCase{client: "tftp", name: "tftp-hpa", args: tftpHPAArgs(opRRQ, false)}, `Boot\x64\pxeboot.n12`, "Boot/x64/pxeboot.n12"},
	} {
		got := fetchWithClient(t, c.client, host, port, c.remote)
		assertSame(t, got, files[c.file])
		if r := ts.result(t); r.mapped != c.file {
			t.Fatalf("%s %s: served as %q, want %q", c.client.name, c.remote, r.mapped, c.file)
		}
	}
	for remote, file := range map[string]string{
		`C:\Boot\x64\bootmgr.exe`:      "Boot/x64/bootmgr.exe",
		`\BOOT\FONTS\WGL4_BOOT.TTF`:    "Boot/Fonts/wgl4_boot.ttf",
		`D:\Sources\BOOT.WIM`:          "sources/boot.wim",
		`\\Boot\\boot.SDI`:             "Boot/boot.sdi",
		"/boot/bcd":                    "Boot/BCD",
		`\Boot\x64\..\..\..\etc\hosts`: "",
	} {
		res, err := tftpGet(ts.addr, remote, clientOptions{blksize: 1432})
		if file == "" {
			var we *wireError
			if !errors.As(err, &we) || we.code != codeAccess {
				t.Fatalf("%s: %v, want ERROR 2", remote, err)
			}
			ts.result(t)
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", remote, err)
		}
		assertSame(t, res.data, files[file])
		ts.result(t)
	}
}

// TestMapFileSIGHUPReload on the built binary: SIGHUP puts a new rules file
// in force, a bad one is reported with its line and leaves the old rules,
// and the summary line names the mapped file.
func TestMapFileSIGHUPReload(t *testing.T) {
	root := t.TempDir()
	first, second := randomBytes(1500, 71), randomBytes(2500, 72)
	os.WriteFile(filepath.Join(root, "first"), first, 0o644)
	os.WriteFile(filepath.Join(root, "second"), second, 0o644)
	rules := filepath.Join(t.TempDir(), "map.rules")
	os.WriteFile(rules, []byte("r ^boot$ first\n"), 0o644)
	srv := startBinary(t, exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", root, "--map-file", rules,
		"--metrics", "127.0.0.1:0"))
	metrics := metricsAddr(t, srv)
	fetch := func(want []byte) {
		t.Helper()
		res, err := tftpGet(srv.addr, "boot", clientOptions{})
		if err != nil {
			t.Fatal(err)
		}
		assertSame(t, res.data, want)
	}
	fetch(first)
	if line := srv.awaitLog(t, "transfer complete"); !strings.Contains(line, "file=boot") || !strings.Contains(line, "mapped=first") {
		t.Fatalf("summary line %q does not carry mapped=first", line)
	}

	os.WriteFile(rules, []byte("# now the second\nr ^boot$ second\n"), 0o644)
	srv.cmd.Process.Signal(syscall.SIGHUP)
	srv.awaitLog(t, "map file reloaded")
	fetch(second)

	os.WriteFile(rules, []byte("r ^boot$ first\nr ^(x)\\1 y\n"), 0o644)
	srv.cmd.Process.Signal(syscall.SIGHUP)
	if line := srv.awaitLog(t, "map file not reloaded"); !strings.Contains(line, rules+":2: bad regex") || !strings.Contains(line, "back-reference") {
		t.Fatalf("log line %q does not name %s:2", line, rules)
	}
	fetch(second)
	// The signals are handled one after the other: once SIGUSR1's list
	// is logged, both reloads were counted.
	srv.cmd.Process.Signal(syscall.SIGUSR1)
	srv.awaitLog(t, `msg="running transfers"`)
	expectSamples(t, scrapeMetrics(t, metrics), map[string]float64{
		`tftpd_map_file_reloads_total{result="ok"}`:    1,
		`tftpd_map_file_reloads_total{result="error"}`: 1,
	})
}

// TestBadMapFileAtStartup: one line naming the file and line, status 2.
func TestBadMapFileAtStartup(t *testing.T) {
	rules := filepath.Join(t.TempDir(), "bad.rules")
	os.WriteFile(rules, []byte("# comment\n\nrx ^a b\n"), 0o644)
	var stdout, stderr bytes.Buffer
	code := run([]string{"-r", t.TempDir(), "--map-file", rules}, &stdout, &stderr)
	want := "r-tftpd: " + rules + ":3: unknown operation 'x' in \"rx\" (known: r g i e E s a j G P 4 6 ~)\n"
	if code != 2 || stderr.String() != want {
		t.Fatalf("exit %d, stderr %q; want 2 and %q", code, stderr.String(), want)
	}
	cmd := exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "--map-file", rules)
	out, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 2 || string(out) != want {
		t.Fatalf("binary: exit %d, output %q", cmd.ProcessState.ExitCode(), out)
	}
}

// TestMapFileReloadWhileServing: reloads race with requests without a data
// race (go test -race) and every request sees one rule set or the other.
func TestMapFileReloadWhileServing(t *testing.T) {
	rules := filepath.Join(t.TempDir(), "map.rules")
	os.WriteFile(rules, []byte("r ^boot$ one\n"), 0o644)
	ts := startServer(t, "127.0.0.1", "--map-file", rules)
	one, two := ts.writeFile(t, "one", 600), ts.writeFile(t, "two", 700)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 50 {
			os.WriteFile(rules, []byte("r ^boot$ "+[]string{"one", "two"}[i%2]+"\n"), 0o644)
			if err := ts.rules.reload(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for range 20 {
		res, err := tftpGet(ts.addr, "boot", clientOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(res.data, one) && !bytes.Equal(res.data, two) {
			t.Fatalf("received %d bytes, neither file", len(res.data))
		}
	}
	<-done
}
