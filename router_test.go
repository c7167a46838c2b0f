//go:build firmware

// The router binaries run: the static builds of `make cross` for big- and
// little-endian MIPS (softfloat), ARMv5 and arm64 serve under Debian's
// qemu-user, inside a network namespace, to atftp and curl over IPv4 and
// IPv6. Byte order and struct layout (IP_PKTINFO, the netlink MTU lookup,
// socket options) go wrong there and nowhere else.
package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// routerTarget is one cross build: GOARCH, its extra environment as in
// the Makefile's TARGETS, and the qemu-user program that runs it.
type routerTarget struct {
	name, arch string
	env        []string
	qemu       string
}

var routerTargets = []routerTarget{
	{"mips", "mips", []string{"GOMIPS=softfloat"}, "qemu-mips"},
	{"mipsle", "mipsle", []string{"GOMIPS=softfloat"}, "qemu-mipsel"},
	{"armv5", "arm", []string{"GOARM=5"}, "qemu-arm"},
	{"arm64", "arm64", nil, "qemu-aarch64"},
}

// routerMTU is the link between the client's namespace and the server's:
// below Ethernet's, so a blksize the server grants shows that it read the
// interface index from IP_PKTINFO and the MTU from netlink correctly.
const routerMTU = 1400

func TestRouterBinaries(t *testing.T) {
	needTools(t, "ip", "atftp", "curl", "qemu-mips", "qemu-mipsel", "qemu-arm", "qemu-aarch64")
	data := randomBytes(1<<20+123, 5)
	for _, target := range routerTargets {
		t.Run(target.name, func(t *testing.T) {
			bin := crossBuild(t, ".", target.arch, target.env...)
			probe := crossBuild(t, "./testdata/mtuprobe", target.arch, target.env...)
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

			// What the emulator lets the binary see of each interface's MTU:
			// the server's blksize cap is judged against that.
			mtuReadable := map[string]bool{}
			for dev, want := range map[string]int{"lo": 65536, "veth0": routerMTU} {
				mtuReadable[dev] = probeMTU(t, srvNS, target.qemu, probe, dev, want)
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
				dev    string // the server's interface the request arrives on
				// The blksize granted with the interface's MTU read, and
				// with the fallback of 1500 when the emulator hides it.
				wantBlksize, fallbackBlksize int
				wantWindowsize               int
				serverSeesAsPfx              string
			}{
				{"atftp IPv4 loopback", srvNS, "127.0.0.1", "atftp", atftpArgs(opRRQ, "blksize 1468", "windowsize 16", "tsize 0"), "lo", 1468, 1468, 16, "127.0.0.1:"},
				{"curl IPv4 loopback", srvNS, "127.0.0.1", "curl", curlArgs(opRRQ, "--tftp-blksize", "1468"), "lo", 1468, 1468, 1, "127.0.0.1:"},
				{"atftp IPv6 loopback", srvNS, "::1", "atftp", atftpArgs(opRRQ, "blksize 1468", "windowsize 16", "tsize 0"), "lo", 1468, 1448, 16, "[::1]:"},
				{"curl IPv6 loopback", srvNS, "::1", "curl", curlArgs(opRRQ, "--tftp-blksize", "1468"), "lo", 1468, 1448, 1, "[::1]:"},
				// Past the link's MTU of 1400: the server must lower blksize
				// to fit (IPv4: 1400-32, IPv6: 1400-52).
				{"atftp IPv4 veth MTU 1400", cliNS, "192.0.2.1", "atftp", atftpArgs(opRRQ, "blksize 8192", "windowsize 16"), "veth0", 1368, 1468, 16, "192.0.2.2:"},
				{"curl IPv4 veth MTU 1400", cliNS, "192.0.2.1", "curl", curlArgs(opRRQ, "--tftp-blksize", "8192"), "veth0", 1368, 1468, 1, "192.0.2.2:"},
				{"atftp IPv6 veth MTU 1400", cliNS, "2001:db8::1", "atftp", atftpArgs(opRRQ, "blksize 8192", "windowsize 16"), "veth0", 1348, 1448, 16, "[2001:db8::2]:"},
				{"curl IPv6 veth MTU 1400", cliNS, "2001:db8::1", "curl", curlArgs(opRRQ, "--tftp-blksize", "8192"), "veth0", 1348, 1448, 1, "[2001:db8::2]:"},
			} {
				wantBlksize := c.wantBlksize
				if !mtuReadable[c.dev] {
					wantBlksize = c.fallbackBlksize
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
						target.name, c.name, line.msg, line.fields["blksize"], line.fields["windowsize"], wantBlksize, c.wantWindowsize)
				default:
					t.Logf("%s %s: %d bytes, blksize %s windowsize %s, %s retransmits, %s",
						target.name, c.name, len(got), line.fields["blksize"], line.fields["windowsize"], line.fields["retransmits"], line.fields["duration"])
				}
			}
		})
	}
}

var probeRE = regexp.MustCompile(`^(?:mtu (\d+)|error (.*))\n$`)

// probeMTU runs testdata/mtuprobe under the emulator and says whether it
// reads dev's MTU through netlink as the server does; a wrong MTU fails. Debian 12's qemu-user (7.2) leaves netlink attributes it does
// not know (ones newer kernels send, e.g. type 65) in the host's byte order,
// so on a big-endian target with a newer host kernel Go cannot parse the
// link dump at all: the server then falls back to an MTU of 1500, which is
// what is checked instead. On real hardware the kernel speaks the target's
// byte order.
func probeMTU(t *testing.T, ns *netns, qemu, probe, dev string, want int) bool {
	t.Helper()
	out, _ := ns.command(qemu, probe, dev).CombinedOutput()
	m := probeRE.FindStringSubmatch(string(out))
	switch {
	case m == nil:
		t.Fatalf("mtuprobe %s under %s: %q", dev, qemu, out)
	case m[2] != "":
		t.Logf("%s: the MTU of %s cannot be read under %s (%s); expecting the server's fallback of 1500", filepath.Base(probe), dev, qemu, m[2])
		return false
	case m[1] != strconv.Itoa(want):
		t.Errorf("mtuprobe under %s reads an MTU of %s for %s, want %d", qemu, m[1], dev, want)
	}
	return true
}
