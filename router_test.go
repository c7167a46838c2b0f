//go:build firmware

// The router binaries run: the static builds of `make cross` for big- and
// little-endian MIPS (softfloat), ARMv5 and arm64 serve under Debian's
// qemu-user, inside a network namespace, to atftp and curl over IPv4 and
// IPv6. Byte order and struct layout (IP_PKTINFO, the MTU ioctls, socket
// options) go wrong there and nowhere else.
package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// routerTarget is one cross build: GOARCH, its extra environment as in
// the Makefile's TARGETS, and the qemu-user program that runs it.
type routerTarget struct {
	name, arch string
	env        []string
	qemu       string
	// pktinfoUnswapped: the emulator hands IP_PKTINFO and IPV6_PKTINFO
	// over in the host's byte order (Debian 12's qemu-user 7.2 does not
	// translate them), so a big-endian binary reads interface 1 as
	// 16777216, finds no such interface and caps blksize by the fallback
	// MTU of 1500. On the hardware the kernel writes the target's order.
	pktinfoUnswapped bool
}

var routerTargets = []routerTarget{
	{"mips", "mips", []string{"GOMIPS=softfloat"}, "qemu-mips", true},
	{"mipsle", "mipsle", []string{"GOMIPS=softfloat"}, "qemu-mipsel", false},
	{"armv5", "arm", []string{"GOARM=5"}, "qemu-arm", false},
	{"arm64", "arm64", nil, "qemu-aarch64", false},
}

// routerMTU is the link between the client's namespace and the server's:
// below Ethernet's, so a blksize the server grants shows that it read the
// interface index from IP_PKTINFO and the MTU by ioctl correctly.
const routerMTU = 1400

func TestRouterBinaries(t *testing.T) {
	needTools(t, "ip", "atftp", "curl", "qemu-mips", "qemu-mipsel", "qemu-arm", "qemu-aarch64")
	data := randomBytes(1<<20+123, 5)
	for _, target := range routerTargets {
		t.Run(target.name, func(t *testing.T) {
			bin := crossBuild(t, ".", target.arch, target.env...)
			srvNS, cliNS := newNetns(t), newNetns(t)
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "f"), data, 0o644)

			// A veth pair: 192.0.2.1 / 2001:db8::1 on the server's side,
			// .2 / ::2 on the client's, both with MTU 1400.
			if out, err := exec.Command("ip", "-n", srvNS.name, "link", "add", "veth0", "mtu", strconv.Itoa(routerMTU),
				"type", "veth", "peer", "name", "veth1", "netns", cliNS.name, "mtu", strconv.Itoa(routerMTU)).CombinedOutput(); err != nil {
				t.Fatalf("veth: %v\n%s", err, out)
			}
			for _, side := range []struct {
				ns       *netns
				dev, end string
			}{{srvNS, "veth0", "1"}, {cliNS, "veth1", "2"}} {
				side.ns.ip(t, "addr", "add", "192.0.2."+side.end+"/24", "dev", side.dev)
				side.ns.ip(t, "addr", "add", "2001:db8::"+side.end+"/64", "dev", side.dev, "nodad")
				side.ns.ip(t, "link", "set", side.dev, "up")
			}

			// The default listener: port 69 on ::, dual-stack, as on a router.
			srv := startProcess(t, srvNS.command(target.qemu, bin, "--root", dir, "--log-level", "debug"),
				filepath.Join(dir, "server.log"))
			if _, err := srv.out.await(0, regexp.MustCompile(`msg=listening`), commandDeadline); err != nil {
				t.Fatalf("server under %s: %v\n%s", target.qemu, err, srv.out.tail(4000))
			}
			for _, c := range []struct {
				name   string
				ns     *netns
				host   string
				client string
				args   func(host, port, remote, local string) []string
				// The blksize granted: what the interface's MTU holds.
				wantBlksize, wantWindowsize int
				serverSeesAsPfx             string
			}{
				{"atftp IPv4 loopback", srvNS, "127.0.0.1", "atftp", atftpArgs(opRRQ, "blksize 1468", "windowsize 16", "tsize 0"), 1468, 16, "127.0.0.1:"},
				{"curl IPv4 loopback", srvNS, "127.0.0.1", "curl", curlArgs(opRRQ, "--tftp-blksize", "1468"), 1468, 1, "127.0.0.1:"},
				{"atftp IPv6 loopback", srvNS, "::1", "atftp", atftpArgs(opRRQ, "blksize 1468", "windowsize 16", "tsize 0"), 1468, 16, "[::1]:"},
				{"curl IPv6 loopback", srvNS, "::1", "curl", curlArgs(opRRQ, "--tftp-blksize", "1468"), 1468, 1, "[::1]:"},
				// Past the link's MTU of 1400: the server must lower blksize
				// to fit (IPv4: 1400-32, IPv6: 1400-52).
				{"atftp IPv4 veth MTU 1400", cliNS, "192.0.2.1", "atftp", atftpArgs(opRRQ, "blksize 8192", "windowsize 16"), 1368, 16, "192.0.2.2:"},
				{"curl IPv4 veth MTU 1400", cliNS, "192.0.2.1", "curl", curlArgs(opRRQ, "--tftp-blksize", "8192"), 1368, 1, "192.0.2.2:"},
				{"atftp IPv6 veth MTU 1400", cliNS, "2001:db8::1", "atftp", atftpArgs(opRRQ, "blksize 8192", "windowsize 16"), 1348, 16, "[2001:db8::2]:"},
				{"curl IPv6 veth MTU 1400", cliNS, "2001:db8::1", "curl", curlArgs(opRRQ, "--tftp-blksize", "8192"), 1348, 1, "[2001:db8::2]:"},
			} {
				wantBlksize := c.wantBlksize
				if target.pktinfoUnswapped {
					wantBlksize = 1500 - 20 - 8 - 4 // IPv4, UDP and TFTP headers
					if strings.Contains(c.host, ":") {
						wantBlksize = 1500 - 40 - 8 - 4
					}
				}
				from := srv.out.len()
				local := filepath.Join(t.TempDir(), "out")
				ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
				cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", c.ns.name, c.client},
					c.args(c.host, "69", "f", local)...)...)
				out, err := cmd.CombinedOutput()
				cancel()
				got, readErr := os.ReadFile(local)
				line, lineErr := awaitTransfer(srv.out, from, "f", c.serverSeesAsPfx, serverLineDeadline)
				switch {
				case err != nil || readErr != nil:
					t.Errorf("%s %s: %v %v\n%s\n--- server log ---\n%s", target.name, c.name, err, readErr, out, srv.out.tail(4000))
				case !bytes.Equal(got, data):
					t.Errorf("%s %s: received %d bytes that differ from the %d sent", target.name, c.name, len(got), len(data))
				case lineErr != nil:
					t.Errorf("%s %s: no server line: %v\n%s", target.name, c.name, lineErr, srv.out.tail(4000))
				case line.msg != "transfer complete" || line.int("blksize") != wantBlksize || line.int("windowsize") != c.wantWindowsize:
					t.Errorf("%s %s: server says %q blksize %s windowsize %s, want complete with %d and %d",
						target.name, c.name, line.msg, line.fields["blksize"], line.fields["windowsize"], c.wantBlksize, c.wantWindowsize)
				default:
					t.Logf("%s %s: %d bytes, blksize %s windowsize %s, %s retransmits, %s",
						target.name, c.name, len(got), line.fields["blksize"], line.fields["windowsize"], line.fields["retransmits"], line.fields["duration"])
				}
			}
		})
	}
}
