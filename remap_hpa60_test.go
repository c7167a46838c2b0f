// tftpd-hpa 6.0's rules, each operation as its manual (tftpd/tftpd.8.in)
// defines it: ":label" lines and "j" jumps, "E" that ends only on a name
// that can be served (and undoes a rewrite that cannot), "gg" that repeats
// on the rest of the name, the combinations the manual forbids refused at
// startup with their line, and --map-steps bounding jumps and repeats.
// Through the server, "E" sees the files a read would open and the folders
// an upload would land in; --map-test prints what a name maps to.
package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMapRulesOfTftpdHpa60 is one case per 6.0 operation and flag, with the
// result the manual defines. servable lists the names an "E" rule may end
// on.
func TestMapRulesOfTftpdHpa60(t *testing.T) {
	for _, c := range []struct {
		why, rules, in string
		op             uint16
		servable       []string
		steps          int    // --map-steps; 0 for the default
		want           string // the mapped name, or
		code           int    // the ERROR code (-1: none)
	}{
		// Labels and j: a match goes on after the label its replacement names.
		{"j jumps over the rules up to its label", "j ^a skip\nr ^ x-\n:skip\nr ^ y-", "a", opRRQ, nil, 0, "y-a", -1},
		{"j does not jump when the regex does not match", "j ^a skip\nr ^ x-\n:skip\nr ^ y-", "b", opRRQ, nil, 0, "y-x-b", -1},
		{"~j jumps when the regex does not match", "~j ^a skip\nr ^ x-\n:skip\nr ^ y-", "b", opRRQ, nil, 0, "y-b", -1},
		{"~j falls through when it matches", "~j ^a skip\nr ^ x-\n:skip\nr ^ y-", "a", opRRQ, nil, 0, "y-x-a", -1},
		{"a jump may go back", ":again\nj ^done/ end\nr ^ done/\nj ^ again\n:end", "f", opRRQ, nil, 0, "done/f", -1},
		{"a label at the end of the file ends processing", "j ^ end\nr ^ x-\n:end", "f", opRRQ, nil, 0, "f", -1},
		{"a label built from the match", "j ^(x86|arm)/ arch_\\1\n:arch_x86\nre ^ x86-\n:arch_arm\nre ^ arm-", "arm/f", opRRQ, nil, 0, "arm-arm/f", -1},
		{"a label built from the match that the file lacks", "j ^([a-z]+)/ arch_\\1\n:arch_x86", "ppc/f", opRRQ, nil, 0, "", codeUndefined},
		{"a label built from the client's address", "j ^ c\\x\n:cC00002A9\nr ^ mine-\ne ^\n:other", "f", opRRQ, nil, 0, "mine-f", -1},
		{"jumps count against the steps: a loop ends", ":top\nj ^ top", "f", opRRQ, nil, 0, "", codeUndefined},
		{"a jump filtered by G is not taken for a write", "jG ^ skip\nr ^ x-\n:skip", "f", opWRQ, nil, 0, "x-f", -1},
		{"a jump filtered by 6 is not taken for an IPv4 client", "j6 ^ skip\nr ^ x-\n:skip", "f", opRRQ, nil, 0, "x-f", -1},
		{"ji matches regardless of case", "ji ^A skip\nr ^ x-\n:skip", "a", opRRQ, nil, 0, "a", -1},
		{"~j expands \\0 to nothing: no match", "~j ^x l\\0\n:l\nr ^ y-", "f", opRRQ, nil, 0, "y-f", -1},
		{"e ends processing before any label", "e ^\n:l\nr ^ x-", "f", opRRQ, nil, 0, "f", -1},
		{"s starts over at the first rule, labels and all", "r ^b$ c\n:l\nrs ^a$ b", "a", opRRQ, nil, 0, "c", -1},

		// E: ends when the result can be served; else the rule did not match.
		{"rE ends on the first servable rewrite", "rE ^(.*)$ \\1.efi\nrE ^(.*)$ \\1.bin\nr ^ never-", "k", opRRQ, []string{"k.efi", "k.bin"}, 0, "k.efi", -1},
		{"rE undoes a rewrite that names nothing", "rE ^(.*)$ \\1.efi\nrE ^(.*)$ \\1.bin", "k", opRRQ, []string{"k.bin"}, 0, "k.bin", -1},
		{"rE leaves the name when nothing is servable", "rE ^(.*)$ \\1.efi\nrE ^(.*)$ \\1.bin", "k", opRRQ, nil, 0, "k", -1},
		{"rE undone goes on with the next rule", "rE ^(.*)$ \\1.efi\nr ^k$ x", "k", opRRQ, nil, 0, "x", -1},
		{"E without r ends on a servable name", "E ^ok\nr ^ no-", "ok", opRRQ, []string{"ok"}, 0, "ok", -1},
		{"E without r goes on past a name that is not", "E ^ok\nr ^ no-", "ok", opRRQ, nil, 0, "no-ok", -1},
		{"~E ends on a servable name the regex misses", "~E ^x\nr ^ no-", "ok", opRRQ, []string{"ok"}, 0, "ok", -1},
		{"EG is not tried for a write", "rEG ^ w-\nr ^ x-", "f", opWRQ, []string{"w-f"}, 0, "x-f", -1},
		{"rEP ends a write whose result can be stored", "rEP ^ w-\nr ^ x-", "f", opWRQ, []string{"w-f"}, 0, "w-f", -1},
		{"rgE checks the result of all the repeats", "rgE a b\nr ^ no-", "aa", opRRQ, []string{"bb"}, 0, "bb", -1},

		// gg: repeats on the part of the name not yet matched.
		{"gg replaces every match, as g", "rgg a b", "aaa", opRRQ, nil, 0, "bbb", -1},
		{"gg never rereads its own replacement", "rgg a aa", "aa", opRRQ, nil, 0, "aaaa", -1},
		{"g rereads it and never ends", "rg a aa", "aa", opRRQ, nil, 0, "", codeUndefined},
		{"gg: ^ holds only at the name's start (REG_NOTBOL)", "rgg ^a x", "aaab", opRRQ, nil, 0, "xaab", -1},
		{"gg: after an empty replacement at the start, the rest is the name's start", "rgg ^a", "aaab", opRRQ, nil, 0, "b", -1},
		{"gg: \\` holds at the rest's start, as regexec sees it", "rgg \\`a x", "aaab", opRRQ, nil, 0, "xxxb", -1},
		{"g: ^ holds again on each new name", "rg ^a", "aaab", opRRQ, nil, 0, "b", -1},
		{"gg: an empty match next to the last moves on, as sed", "rgg x* -", "ab", opRRQ, nil, 0, "-a-b-", -1},
		{"gg: an empty match after a real one is not replaced", "rgg b* -", "abc", opRRQ, nil, 0, "-a-c-", -1},
		{"gg: groups are the match's own", "rgg ([a-z])([0-9]) \\2\\1", "a1b2c", opRRQ, nil, 0, "1a2bc", -1},
		{"ggg is gg", "rggg a b", "aa", opRRQ, nil, 0, "bb", -1},
		{"gg without r does nothing", "gg a\nr a b", "aa", opRRQ, nil, 0, "ba", -1},

		// G and P, 4 and 6: a rule with both applies to neither.
		{"GP applies to no read", "rGP ^f$ x", "f", opRRQ, nil, 0, "f", -1},
		{"GP applies to no write", "rGP ^f$ x", "f", opWRQ, nil, 0, "f", -1},

		// --map-steps: every rule tried and every repeat counts.
		{"three rules in three steps", "r a b\nr b c\nr c d", "a", opRRQ, nil, 3, "d", -1},
		{"three rules over two steps", "r a b\nr b c\nr c d", "a", opRRQ, nil, 2, "", codeUndefined},
		{"a repeat is a step", "rg a b", "aaa", opRRQ, nil, 3, "bbb", -1},
		{"a repeat past the steps", "rg a b", "aaa", opRRQ, nil, 2, "", codeUndefined},
		{"a rule for another operation is no step", "rP a b\nrP a b\nr a c", "a", opRRQ, nil, 1, "c", -1},
		{"a label is no step", ":a\n:b\n:c\nr a c", "a", opRRQ, nil, 1, "c", -1},
	} {
		rs := mustRules(t, c.rules)
		rs.steps = c.steps
		servable := func(name string) bool {
			return strings.Contains("\x00"+strings.Join(c.servable, "\x00")+"\x00", "\x00"+name+"\x00")
		}
		got, err := rs.mapName(c.in, c.op, client4, servable)
		switch {
		case c.code >= 0:
			if err == nil || int(toWireError(err).code) != c.code {
				t.Errorf("%s: %q on %q: %q, %v; want ERROR %d", c.why, c.rules, c.in, got, err, c.code)
			}
		case err != nil || got != c.want:
			t.Errorf("%s: %q on %q: %q, %v; want %q", c.why, c.rules, c.in, got, err, c.want)
		}
	}
}

// TestMapRulesRefusedAsTftpdHpa60Does: what the manual says cannot be
// combined, labels that are missing or doubled, and a jump without a
// label stop the server at startup with FILE:LINE.
func TestMapRulesRefusedAsTftpdHpa60Does(t *testing.T) {
	for _, c := range []struct{ line, why string }{
		{"r~ a b", "r and ~"}, {"ra a b", "r and a"}, {"rj a b", "r and j"},
		{"ea a", "e and a"}, {"eE a", "e and E"}, {"ej a b", "e and j"}, {"es a", "e and s"},
		{"Ea a", "E and a"}, {"Ej a b", "E and j"}, {"Es a", "E and s"},
		{"sa a", "s and a"}, {"sj a b", "s and j"}, {"aj a b", "a and j"},
		{"j ^a nowhere", `no label "nowhere"`},
		{"j ^a", "needs the label"},
		{":", "a label needs a name"},
		{":here", `label "here" is already defined on line 2`},
		{"jx ^a here", "unknown operation 'x'"},
	} {
		_, err := parseRemapRules("x.rules", "# fine\n:here\n\n"+c.line+"\nr ^later$ x\n")
		var fe *remapFileError
		if !errors.As(err, &fe) || fe.line != 4 || !strings.HasPrefix(err.Error(), "x.rules:4: ") || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%q: %v; want x.rules:4: ...%s...", c.line, err, c.why)
		}
	}
	// A jump may go forward to a label defined later in the file.
	if _, err := parseRemapRules("x.rules", "j ^ later\nr a b\n:later\n"); err != nil {
		t.Fatal(err)
	}
}

// TestMapFileEndsOnServableNames: through the server, "E" sees what a
// read would open (a file below the root, a name below a URL link) and
// the folder an upload would land in; the bytes served are that file's.
func TestMapFileEndsOnServableNames(t *testing.T) {
	rules := filepath.Join(t.TempDir(), "map.rules")
	os.WriteFile(rules, []byte(`# try the EFI image, then the BIOS one, else leave the name
rEG ^(boot/[^.]+)$ \1.efi
rEG ^(boot/[^.]+)$ \1.bin
rEG ^remote$ via-url/remote
# uploads go to the client's own folder when it has one
rEP ^([^/]+)$ clients/\i/\1
`), 0o644)
	ts, up := startUploadServer(t, "127.0.0.1", "--map-file", rules)
	efi := ts.writeFile(t, "boot/a.efi", 3000)
	ts.writeFile(t, "boot/a.bin", 2000)
	bin := ts.writeFile(t, "boot/b.bin", 2500)
	plain := ts.writeFile(t, "boot/c", 700)
	os.Mkdir(filepath.Join(ts.root, "boot/d.efi"), 0o755) // a folder cannot be served
	dbin := ts.writeFile(t, "boot/d.bin", 900)
	ts.link(t, "via-url", "http://127.0.0.1:9/base/")
	for _, c := range []struct {
		name, mapped string
		want         []byte
	}{{"boot/a", "boot/a.efi", efi}, {"boot/b", "boot/b.bin", bin}, {"boot/c", "boot/c", plain}, {"boot/d", "boot/d.bin", dbin}} {
		res, err := tftpGet(ts.addr, c.name, clientOptions{blksize: 1024})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		assertSame(t, res.data, c.want)
		if r := ts.result(t); r.mapped != c.mapped {
			t.Fatalf("%s served as %q, want %q", c.name, r.mapped, c.mapped)
		}
	}
	// Below a URL link, a name counts as servable without any fetch: the
	// mapping ends on it, and only then is the origin asked (here: none).
	// Without proxy support nothing is servable there.
	if _, err := tftpGet(ts.addr, "remote", clientOptions{}); !errors.As(err, new(*wireError)) {
		t.Fatalf("remote: %v, want an ERROR from the unreachable origin", err)
	}
	if r, want := ts.result(t), map[bool]string{true: "via-url/remote", false: "remote"}[proxySupport]; r.mapped != want {
		t.Fatalf("remote served as %q, want %s", r.mapped, want)
	}

	os.MkdirAll(filepath.Join(up, "clients", "127.0.0.1"), 0o755)
	for _, c := range []struct{ name, landed string }{{"router.cfg", "clients/127.0.0.1/router.cfg"}, {"sub/x.cfg", "sub/x.cfg"}} {
		if c.name == "sub/x.cfg" {
			os.Mkdir(filepath.Join(up, "sub"), 0o755)
		}
		data := randomBytes(1500, 9)
		if _, err := tftpPut(ts.addr, c.name, data, clientOptions{}); err != nil {
			t.Fatalf("put %s: %v", c.name, err)
		}
		ts.result(t)
		assertSame(t, readFile(t, filepath.Join(up, c.landed)), data)
	}
	// Without the client's folder the rewrite is undone.
	os.RemoveAll(filepath.Join(up, "clients"))
	data := randomBytes(700, 10)
	if _, err := tftpPut(ts.addr, "other.cfg", data, clientOptions{}); err != nil {
		t.Fatal(err)
	}
	if r := ts.result(t); r.mapped != "other.cfg" {
		t.Fatalf("other.cfg stored as %q", r.mapped)
	}
	assertSame(t, readFile(t, filepath.Join(up, "other.cfg")), data)
}

// TestMapStepsEndsALoopWithOneLogLine: on the built binary, a loop of
// jumps gets ERROR 0 after --map-steps, with one warning in the log.
func TestMapStepsEndsALoopWithOneLogLine(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "f"), []byte("f\n"), 0o644)
	rules := filepath.Join(t.TempDir(), "loop.rules")
	os.WriteFile(rules, []byte(":top\nj ^loop top\n"), 0o644)
	srv := startBinary(t, exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", root, "--map-file", rules, "--map-steps", "50"))
	_, err := tftpGet(srv.addr, "loop", clientOptions{})
	we := wantWireError(t, err, codeUndefined)
	if we.msg != errMapRunaway.msg {
		t.Fatalf("ERROR %q, want %q", we.msg, errMapRunaway.msg)
	}
	if line := srv.awaitLog(t, "file name mapping stopped"); !strings.Contains(line, "map_steps=50") {
		t.Fatalf("log line %q does not name the bound", line)
	}
	srv.awaitLog(t, "transfer failed")
	// The next request's summary comes with no second warning before it.
	res, err := tftpGet(srv.addr, "f", clientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, []byte("f\n"))
	if line := srv.awaitLog(t, "msg="); !strings.Contains(line, "transfer complete") {
		t.Fatalf("log line %q, want the next transfer's summary", line)
	}
	for _, bad := range []string{"0", "-1", "x", "2000000"} {
		var stdout, stderr bytes.Buffer
		if code := run([]string{"-r", root, "--map-steps", bad}, &stdout, &stderr); code != 2 || strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("--map-steps %s: exit %d, %q", bad, code, stderr.String())
		}
	}
}

// TestMapTestPrintsWhatEachNameMapsTo: --map-test on the built binary
// prints one line for each line of its file, "ok" and the mapped name or
// "error", the code and the message the client would get, and exits 0; "E"
// sees the served files, --map-test-client the address, and
// --map-test-write the folders an upload would land in.
func TestMapTestPrintsWhatEachNameMapsTo(t *testing.T) {
	root, up, dir := t.TempDir(), t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(root, "boot"), 0o755)
	os.WriteFile(filepath.Join(root, "boot/a.efi"), []byte("a"), 0o644)
	os.WriteFile(filepath.Join(root, "boot/b.bin"), []byte("b"), 0o644)
	os.MkdirAll(filepath.Join(up, "clients/2001:db8::7"), 0o755)
	rules := filepath.Join(dir, "map.rules")
	os.WriteFile(rules, []byte(`rEG ^(boot/[^.]+)$ \1.efi
rEG ^(boot/[^.]+)$ \1.bin
rEP ^([^/]+)$ clients/\i/\1
a ^secret \0\ is\ private
:loop
j ^loop loop
j6 ^ v6
e ^
:v6
r ^ \x-
`), 0o644)
	names := filepath.Join(dir, "names")
	os.WriteFile(names, []byte("boot/a\nboot/b\nboot/c\nsecret\nloop\nERROR: x\n\nlast"), 0o644)
	for _, c := range []struct {
		args  []string
		want  string
		loops int // the warnings of names that ran past --map-steps
	}{
		{nil, "ok\tboot/a.efi\nok\tboot/b.bin\nok\tboot/c\nerror\t2\tsecret is private\nerror\t0\tfile name mapping did not finish\nok\tERROR: x\nerror\t1\tfile not found\nok\tlast\n", 1},
		{[]string{"--map-test-client", "2001:db8::7"}, "ok\tboot/a.efi\nok\tboot/b.bin\nok\t20010DB8000000000000000000000007-boot/c\nerror\t2\tsecret is private\nerror\t0\tfile name mapping did not finish\nok\t20010DB8000000000000000000000007-ERROR: x\nok\t20010DB8000000000000000000000007-\nok\t20010DB8000000000000000000000007-last\n", 1},
		{[]string{"--map-test-client", "2001:db8::7", "--map-test-write", "--upload-dir", up}, "ok\t20010DB8000000000000000000000007-boot/a\nok\t20010DB8000000000000000000000007-boot/b\nok\t20010DB8000000000000000000000007-boot/c\nok\tclients/2001:db8::7/secret\nok\tclients/2001:db8::7/loop\nok\tclients/2001:db8::7/ERROR: x\nok\t20010DB8000000000000000000000007-\nok\tclients/2001:db8::7/last\n", 0},
	} {
		cmd := exec.Command(serverBinary, append([]string{"-r", root, "--map-file", rules, "--map-test", names, "--map-steps", "40"}, c.args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil || string(out) != c.want {
			t.Errorf("%v: %v, stdout\n%s\nwant\n%s\nstderr %s", c.args, err, out, c.want, stderr.String())
		}
		if n := strings.Count(stderr.String(), "file name mapping stopped"); n != c.loops {
			t.Errorf("%v: %d warnings for the loop, want %d: %s", c.args, n, c.loops, stderr.String())
		}
	}
	for _, c := range []struct{ args []string }{
		{[]string{"--map-test", names}},
		{[]string{"--map-file", rules, "--map-test", names, "--map-test-client", "nowhere"}},
		{[]string{"--map-file", rules, "--map-test", filepath.Join(dir, "missing")}},
	} {
		var stdout, stderr bytes.Buffer
		code := run(append([]string{"-r", root}, c.args...), &stdout, &stderr)
		if code == 0 || stdout.Len() != 0 || strings.Count(stderr.String(), "\n") != 1 || !strings.HasPrefix(stderr.String(), "r-tftpd: --map-test") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want one line on --map-test", c.args, code, stdout.String(), stderr.String())
		}
	}
}
