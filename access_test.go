// The access rules (--allow, --deny, --upload-allow) with real clients from
// 127.0.0.1, 127.0.0.2 and ::1 on a dual-stack socket, where IPv4 clients
// arrive IPv4-mapped and are matched as IPv4: who is let in, who gets
// exactly ERROR 2 "access violation" from the listening port, that a refused
// request is neither admitted nor mapped, the startup errors of the prefix
// lists, and their parser, fuzzed.
package main

import (
	"bytes"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// accessViolation is the whole datagram a refused client receives.
var accessViolation = []byte("\x00\x05\x00\x02access violation\x00")

// expectAccessViolation sends request pkt from local to server and fails
// unless the one reply is exactly ERROR 2 "access violation", from the
// listening port.
func expectAccessViolation(t *testing.T, server netip.AddrPort, local netip.Addr, pkt []byte) {
	t.Helper()
	reply, from := exchangeFrom(t, server, local, pkt, 5*time.Second)
	if !bytes.Equal(reply, accessViolation) || from != server {
		t.Fatalf("from %v: reply %q from %v, want %q from the listening port %v", local, reply, from, accessViolation, server)
	}
}

// accessCheck is one request of a client and whether it may make it.
type accessCheck struct {
	client  string // the address it sends from (and the family it sends to)
	op      uint16
	allowed bool
}

// TestAccessRulesDecideWhoMayReadAndWrite: with --allow only clients inside
// one may ask, --deny wins over --allow, --upload-allow keeps a client that
// may read from writing, and an IPv4 client on the dual-stack socket is
// matched as IPv4 (an IPv4-mapped --deny reaches it, --allow ::/0 does not).
// An allowed client gets its exact bytes, read or written; a refused one
// exactly ERROR 2, and the metrics count it under "access".
func TestAccessRulesDecideWhoMayReadAndWrite(t *testing.T) {
	for _, c := range []struct {
		name   string
		flags  []string
		checks []accessCheck
	}{
		{"allow a list", []string{"--allow", "127.0.0.1, ::1"}, []accessCheck{
			{"127.0.0.1", opRRQ, true}, {"::1", opRRQ, true}, {"127.0.0.2", opRRQ, false}, {"127.0.0.2", opWRQ, false},
		}},
		{"deny wins over allow", []string{"--allow", "127.0.0.0/8", "--deny", "127.0.0.2"}, []accessCheck{
			{"127.0.0.1", opRRQ, true}, {"127.0.0.2", opRRQ, false}, {"::1", opRRQ, false},
		}},
		{"deny alone", []string{"--deny", "::1", "--deny", "::ffff:127.0.0.2/128"}, []accessCheck{
			{"127.0.0.1", opRRQ, true}, {"127.0.0.1", opWRQ, true}, {"127.0.0.2", opRRQ, false}, {"::1", opWRQ, false},
		}},
		{"upload-allow", []string{"--upload-allow", "127.0.0.1/32", "--upload-allow", "::1/128"}, []accessCheck{
			{"127.0.0.2", opRRQ, true}, {"127.0.0.2", opWRQ, false}, {"127.0.0.1", opWRQ, true}, {"::1", opWRQ, true},
		}},
		{"v4-mapped client is IPv4", []string{"--allow", "::/0"}, []accessCheck{
			{"::1", opRRQ, true}, {"127.0.0.1", opRRQ, false},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ts, dir := startUploadServer(t, "::", c.flags...)
			want := ts.writeFile(t, "f", 3000)
			refused := map[uint16]float64{}
			for i, check := range c.checks {
				client := netip.MustParseAddr(check.client)
				server := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ts.addr.Port())
				if client.Is6() {
					server = netip.AddrPortFrom(netip.IPv6Loopback(), ts.addr.Port())
				}
				name := "up" + strconv.Itoa(i)
				switch {
				case !check.allowed && check.op == opRRQ:
					expectAccessViolation(t, server, client, rrq("f", "octet"))
				case !check.allowed:
					expectAccessViolation(t, server, client, clientOptions{}.requestPacket(opWRQ, name))
					if _, err := os.Stat(filepath.Join(dir, name)); !os.IsNotExist(err) {
						t.Fatalf("a refused upload left %s: %v", name, err)
					}
				case check.op == opRRQ:
					res, err := tftpGet(server, "f", clientOptions{local: client})
					if err != nil {
						t.Fatalf("read from %s: %v", client, err)
					}
					assertSame(t, res.data, want)
					ts.result(t)
				default:
					if _, err := tftpPut(server, name, want, clientOptions{local: client}); err != nil {
						t.Fatalf("write from %s: %v", client, err)
					}
					ts.result(t)
					assertSame(t, readFile(t, filepath.Join(dir, name)), want)
				}
				if !check.allowed {
					refused[check.op]++
				}
			}
			select {
			case r := <-ts.results:
				t.Fatalf("a refused request became a transfer: %+v", r)
			default:
			}
			expectSamples(t, string(ts.metrics.appendText(nil)), map[string]float64{
				`tftpd_requests_refused_total{reason="access"}`:       refused[opRRQ] + refused[opWRQ],
				`tftpd_transfers_total{op="read",outcome="refused"}`:  refused[opRRQ],
				`tftpd_transfers_total{op="write",outcome="refused"}`: refused[opWRQ],
			})
		})
	}
}

// TestRefusedRequestIsNeitherAdmittedNorMapped: a refused client gets
// "access violation" where the connection limit would say busy and where
// its name's mapping rule would refuse it with a message of its own: the
// access rules come before both. An allowed client meets both.
func TestRefusedRequestIsNeitherAdmittedNorMapped(t *testing.T) {
	rules := filepath.Join(t.TempDir(), "map.rules")
	if err := os.WriteFile(rules, []byte("a ^secret$ refused\\ by\\ the\\ rule\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, "127.0.0.1", "--deny", "127.0.0.2", "--map-file", rules, "-m", "1")
	denied := netip.MustParseAddr("127.0.0.2")
	expectAccessViolation(t, ts.addr, denied, rrq("secret", "octet"))
	_, err := tftpGet(ts.addr, "secret", clientOptions{})
	if we := wantWireError(t, err, codeAccess); we.msg != "refused by the rule" {
		t.Fatalf("an allowed client got %q, want the rule's message", we.msg)
	}
	ts.result(t)

	want := ts.writeFile(t, "f", 5000)
	l := startLockstep(t, ts.addr, "f")
	if _, err := l.block(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	expectAccessViolation(t, ts.addr, denied, rrq("f", "octet"))
	_, err = tftpGet(ts.addr, "f", clientOptions{})
	wantWireError(t, err, codeUndefined) // busy: the one slot is taken
	got, err := l.rest(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, got, want)
	ts.result(t)
}

// TestAccessRulesWithCurl: Debian's curl is refused by the rules with its
// exit status for a TFTP access violation (69), and writes nothing, from a
// denied IPv4 address and over IPv6 outside --allow; from an allowed
// address it gets the file. (curl 7.88.1 words an ERROR from the listening
// port as "getpeername() failed with errno 107"; its status is right, and
// the exact bytes are TestAccessRulesDecideWhoMayReadAndWrite's.)
func TestAccessRulesWithCurl(t *testing.T) {
	curl := needClient(t, "curl")
	ts := startServer(t, "::", "--allow", "127.0.0.0/8", "--deny", "127.0.0.2")
	want := ts.writeFile(t, "f", 3000)
	port := strconv.Itoa(int(ts.addr.Port()))
	for _, c := range []struct {
		args   []string
		status int
	}{
		{[]string{"tftp://127.0.0.1:" + port + "/f"}, 0},
		{[]string{"--interface", "127.0.0.2", "tftp://127.0.0.1:" + port + "/f"}, 69},
		{[]string{"tftp://[::1]:" + port + "/f"}, 69},
	} {
		out := filepath.Join(t.TempDir(), "out")
		err := exec.Command(curl, append([]string{"-sS", "--max-time", "30", "-o", out}, c.args...)...).Run()
		status := 0
		if ee, ok := err.(*exec.ExitError); ok {
			status = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if status != c.status {
			t.Fatalf("curl %q: exit status %d, want %d", c.args, status, c.status)
		}
		if c.status == 0 {
			assertSame(t, readFile(t, out), want)
			ts.result(t)
		} else if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Fatalf("curl %q was refused but wrote %s: %v", c.args, out, err)
		}
	}
}

// TestBadAccessFlagsAreStartupErrors: each mistake is one line naming the
// option and what is wrong, exit status 2.
func TestBadAccessFlagsAreStartupErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--allow", "10.0.0.1/8"}, `--allow: "10.0.0.1/8": host bits set: the prefix is 10.0.0.0/8 (or the address alone is /32)`},
		{[]string{"--deny", "fe80::1%eth0"}, `--deny: "fe80::1%eth0": a zone (%NAME) cannot be matched, only addresses`},
		{[]string{"--allow", "::ffff:0.0.0.0/95"}, `--allow: "::ffff:0.0.0.0/95": an IPv4-mapped prefix must be /96 or longer (IPv4 clients are matched as IPv4)`},
		{[]string{"--upload-allow", "lan"}, `--upload-allow: "lan": not an address or prefix (such as 192.0.2.0/24 or 2001:db8::/32)`},
		{[]string{"--allow", " , "}, `--allow: no address or prefix in " , "`},
		{[]string{"--allow", "192.0.2.0/33"}, `--allow: "192.0.2.0/33": not an address or prefix (such as 192.0.2.0/24 or 2001:db8::/32)`},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(c.args, &stdout, &stderr); code != 2 || stderr.String() != "r-tftpd: "+c.want+" (see --help)\n" {
			t.Errorf("%q: exit %d, %q; want 2, %q", c.args, code, stderr.String(), c.want)
		}
	}
}

// TestParsePrefixList: lists separated by commas or whitespace, bare
// addresses as /32 and /128, IPv4-mapped prefixes as the IPv4 ones they
// stand for.
func TestParsePrefixList(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"192.0.2.0/24", "192.0.2.0/24"},
		{"192.0.2.7", "192.0.2.7/32"},
		{"2001:db8::/32,  ::1", "2001:db8::/32 ::1/128"},
		{"10.0.0.0/8,,172.16.0.0/12\t192.168.0.0/16\n", "10.0.0.0/8 172.16.0.0/12 192.168.0.0/16"},
		{"::ffff:192.0.2.0/120", "192.0.2.0/24"},
		{"::ffff:0:0/96", "0.0.0.0/0"},
		{"::ffff:192.0.2.1", "192.0.2.1/32"},
		{"0.0.0.0/0 ::/0", "0.0.0.0/0 ::/0"},
	} {
		l, err := parsePrefixList(c.in)
		var got []string
		for _, p := range l {
			got = append(got, p.String())
		}
		if err != nil || strings.Join(got, " ") != c.want {
			t.Errorf("%q: %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

// FuzzCIDRList: whatever a flag value holds, the parser returns an error or
// a non-empty list of masked prefixes, none IPv4-mapped, that reads back as
// itself.
func FuzzCIDRList(f *testing.F) {
	f.Fuzz(func(t *testing.T, value string) {
		l, err := parsePrefixList(value)
		if err != nil {
			return
		}
		if len(l) == 0 {
			t.Fatalf("%q: an empty list without an error", value)
		}
		var text []string
		for _, p := range l {
			if p != p.Masked() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
				t.Fatalf("%q: %v is not a plain masked prefix", value, p)
			}
			text = append(text, p.String())
		}
		again, err := parsePrefixList(strings.Join(text, ","))
		if err != nil || len(again) != len(l) {
			t.Fatalf("%q: %v read back as %v, %v", value, l, again, err)
		}
		for i := range l {
			if again[i] != l[i] {
				t.Fatalf("%q: %v read back as %v", value, l, again)
			}
		}
	})
}
