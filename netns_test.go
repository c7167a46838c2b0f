// What loopback cannot show, in a network namespace of the test's own with a
// veth pair: on a host with several addresses the reply comes from the one
// the request was sent to, a link-local IPv6 request is answered, and a
// broadcast request is answered from the interface's own address.
package main

import (
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// inNetnsEnv marks the copy of the test binary that runs inside the network
// namespace the test made.
const inNetnsEnv = "RTFTPD_TEST_IN_NETNS"

// TestAddressesInOwnNetworkNamespace checks what loopback cannot show: a
// host with several addresses answers from the one a request was sent to,
// an IPv6 link-local request is answered, and a request sent to a broadcast
// address is answered from the interface's own address. It runs in a new
// network namespace with a veth pair, so no datagram leaves it.
func TestAddressesInOwnNetworkNamespace(t *testing.T) {
	if os.Getenv(inNetnsEnv) == "" {
		reexecInNetns(t, "TestAddressesInOwnNetworkNamespace")
		return
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "veth0", "type", "veth", "peer", "name", "veth1"},
		{"link", "set", "veth0", "up"},
		{"link", "set", "veth1", "up"},
		{"addr", "add", "192.0.2.1/24", "broadcast", "192.0.2.255", "dev", "veth0"},
		{"addr", "add", "192.0.2.2/24", "dev", "veth0"},
		{"addr", "add", "fe80::1/64", "dev", "veth0", "nodad"},
		{"addr", "add", "2001:db8::1/64", "dev", "veth0", "nodad"},
		{"addr", "add", "2001:db8::2/64", "dev", "veth0", "nodad"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// IPv6 takes the addresses into use only once the link is up and
	// running (the kernel's link watch can take a second, longer on a busy
	// machine): wait for that, not for a guess.
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		link, _ := exec.Command("ip", "-o", "link", "show", "dev", "veth0").Output()
		tentative, err := exec.Command("ip", "-6", "-o", "addr", "show", "dev", "veth0", "tentative").Output()
		if strings.Contains(string(link), " state UP ") && err == nil && len(tentative) == 0 {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("veth0 not ready after 10 s: %q, tentative addresses %q (%v)", link, tentative, err)
		}
	}
	for _, mode := range [][]string{nil, {"--single-port"}} {
		ts := startServer(t, "::", mode...)
		want := ts.writeFile(t, "f", 5000)
		port := ts.addr.Port()
		for _, target := range []string{"192.0.2.1", "192.0.2.2", "127.0.0.1", "2001:db8::1", "2001:db8::2", "::1", "fe80::1%veth0"} {
			to := netip.AddrPortFrom(netip.MustParseAddr(target), port)
			reply, from := firstReply(t, to, false)
			if reply[1] != opDATA || from.Addr().WithZone("") != to.Addr().WithZone("") {
				t.Fatalf("%v %s: reply %q from %v, want DATA from %v", mode, target, reply[:4], from, to.Addr())
			}
			res, err := tftpGet(to, "f", clientOptions{blksize: 1024})
			if err != nil {
				t.Fatalf("%v %s: %v", mode, target, err)
			}
			assertSame(t, res.data, want)
		}
		reply, from := firstReply(t, netip.AddrPortFrom(netip.MustParseAddr("192.0.2.255"), port), true)
		if reply[1] != opDATA || from.Addr() != netip.MustParseAddr("192.0.2.1") {
			t.Fatalf("%v broadcast: reply %q from %v, want DATA from 192.0.2.1", mode, reply[:4], from)
		}
	}
}

// firstReply sends a read request for "f" to addr and returns the first
// datagram that comes back and where it came from.
func firstReply(t *testing.T, to netip.AddrPort, broadcast bool) ([]byte, netip.AddrPort) {
	t.Helper()
	conn, err := dialClient(to)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if broadcast {
		raw, _ := conn.SyscallConn()
		raw.Control(func(fd uintptr) {
			err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.WriteToUDPAddrPort(rrq("f", "octet"), to); err != nil {
		t.Fatalf("send to %v: %v", to, err)
	}
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := conn.ReadFromUDPAddrPort(buf)
	if err != nil || n < 4 {
		t.Fatalf("no reply to a request sent to %v: %v", to, err)
	}
	// Tell the transfer to stop: this client wanted only its first block.
	conn.WriteToUDPAddrPort([]byte{0, opERROR, 0, 0, 0}, from)
	return buf[:n], unmap(from)
}

// reexecInNetns runs one test again in a new network namespace. It needs
// root (or CAP_SYS_ADMIN) and iproute2; without them the test is skipped,
// except under CI=true.
func reexecInNetns(t *testing.T, test string) {
	_, ipErr := exec.LookPath("ip")
	_, unshareErr := exec.LookPath("unshare")
	if os.Geteuid() != 0 || ipErr != nil || unshareErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root, ip (iproute2) and unshare for a network namespace (CI=true)")
		}
		t.Skip("needs root, ip (iproute2) and unshare for a network namespace")
	}
	cmd := exec.Command("unshare", "--net", "--", os.Args[0], "-test.run=^"+test+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), inNetnsEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+test) {
		t.Fatalf("in a new network namespace: %v\n%s", err, out)
	}
}
