// What loopback cannot show, in a network namespace of the test's own with a
// veth pair: on a host with several addresses the reply comes from the one
// the request was sent to, a link-local IPv6 request is answered, and a
// broadcast request is answered from the interface's own address; with a
// second namespace at the far end of two links, --interface takes requests
// from one link and the kernel refuses those of the other; and a client on
// a directly attached link is known by its MAC address, read from a
// neighbour table entry by a parser that is fuzzed too, which a --map-file
// rule with \m maps its requests by.
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// inNetnsEnv marks the copy of the test binary that runs inside the network
// namespace the test made; serverBinaryEnv tells it the server binary.
const (
	inNetnsEnv      = "RTFTPD_TEST_IN_NETNS"
	serverBinaryEnv = "RTFTPD_TEST_SERVER_BINARY"
)

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
	runIP(t, nil, [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "veth0", "type", "veth", "peer", "name", "veth1"},
		{"link", "set", "veth0", "up"},
		{"link", "set", "veth1", "up"},
		{"addr", "add", "192.0.2.1/24", "broadcast", "192.0.2.255", "dev", "veth0"},
		{"addr", "add", "192.0.2.2/24", "dev", "veth0"},
		{"addr", "add", "fe80::1/64", "dev", "veth0", "nodad"},
		{"addr", "add", "2001:db8::1/64", "dev", "veth0", "nodad"},
		{"addr", "add", "2001:db8::2/64", "dev", "veth0", "nodad"},
	})
	awaitLinkReady(t, nil, "veth0")
	for _, mode := range [][]string{nil, {"--single-port"}} {
		ts := startServer(t, "::", mode...)
		want := ts.writeFile(t, "f", 5000)
		port := ts.addr.Port()
		for _, target := range []string{"192.0.2.1", "192.0.2.2", "127.0.0.1", "2001:db8::1", "2001:db8::2", "::1", "fe80::1%veth0"} {
			to := netip.AddrPortFrom(netip.MustParseAddr(target), port)
			reply, from := requestFirstReply(t, to, false)
			if reply[1] != opDATA || from.Addr().WithZone("") != to.Addr().WithZone("") {
				t.Fatalf("%v %s: reply %q from %v, want DATA from %v", mode, target, reply[:4], from, to.Addr())
			}
			res, err := tftpGet(to, "f", clientOptions{blksize: 1024})
			if err != nil {
				t.Fatalf("%v %s: %v", mode, target, err)
			}
			assertSame(t, res.data, want)
		}
		reply, from := requestFirstReply(t, netip.AddrPortFrom(netip.MustParseAddr("192.0.2.255"), port), true)
		if reply[1] != opDATA || from.Addr() != netip.MustParseAddr("192.0.2.1") {
			t.Fatalf("%v broadcast: reply %q from %v, want DATA from 192.0.2.1", mode, reply[:4], from)
		}
	}
}

// runIP runs ip with each of cmds, through the command prefix (nsenter
// into another namespace, say) when there is one.
func runIP(t *testing.T, prefix []string, cmds [][]string) {
	t.Helper()
	for _, args := range cmds {
		argv := append(append(slices.Clone(prefix), "ip"), args...)
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
		}
	}
}

// awaitLinkReady waits until dev is up and running with no tentative IPv6
// address: IPv6 takes the addresses into use only then (the kernel's link
// watch can take a second, longer on a busy machine).
func awaitLinkReady(t *testing.T, prefix []string, dev string) {
	t.Helper()
	ip := func(args ...string) ([]byte, error) {
		argv := append(append(slices.Clone(prefix), "ip"), args...)
		return exec.Command(argv[0], argv[1:]...).Output()
	}
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		link, _ := ip("-o", "link", "show", "dev", dev)
		tentative, err := ip("-6", "-o", "addr", "show", "dev", dev, "tentative")
		if strings.Contains(string(link), " state UP ") && err == nil && len(tentative) == 0 {
			return
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("%s not ready after 10 s: %q, tentative addresses %q (%v)", dev, link, tentative, err)
		}
	}
}

// TestInterfaceTakesRequestsFromItsLinkOnly: two links join the test's
// namespace to a second one, the clients'. With --interface veth0 the
// server answers a request that comes over veth0, and one over veth2 (or
// over loopback) reaches no socket: the kernel refuses it, the server
// never answers. With both interfaces named, both links are served.
func TestInterfaceTakesRequestsFromItsLinkOnly(t *testing.T) {
	if os.Getenv(inNetnsEnv) == "" {
		reexecInNetns(t, "TestInterfaceTakesRequestsFromItsLinkOnly")
		return
	}
	clients := startNetnsHolder(t)
	pid := strconv.Itoa(clients.Process.Pid)
	runIP(t, nil, [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "veth0", "type", "veth", "peer", "name", "veth1"},
		{"link", "add", "veth2", "type", "veth", "peer", "name", "veth3"},
		{"link", "set", "veth1", "netns", pid},
		{"link", "set", "veth3", "netns", pid},
		{"addr", "add", "192.0.2.1/24", "dev", "veth0"},
		{"addr", "add", "198.51.100.1/24", "dev", "veth2"},
		{"link", "set", "veth0", "up"},
		{"link", "set", "veth2", "up"},
	})
	runIP(t, []string{"nsenter", "-t", pid, "-n"}, [][]string{
		{"link", "set", "lo", "up"},
		{"addr", "add", "192.0.2.2/24", "dev", "veth1"},
		{"addr", "add", "198.51.100.2/24", "dev", "veth3"},
		{"link", "set", "veth1", "up"},
		{"link", "set", "veth3", "up"},
	})
	awaitLinkReady(t, nil, "veth0")
	awaitLinkReady(t, nil, "veth2")
	overVeth0, overVeth2 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("198.51.100.1")

	ts := startServer(t, "0.0.0.0", "--interface", "veth0")
	want := ts.writeFile(t, "f", 20_000)
	at := func(a netip.Addr) netip.AddrPort { return netip.AddrPortFrom(a, ts.addr.Port()) }
	inNetnsOf(t, clients.Process.Pid, func() error {
		res, err := tftpGet(at(overVeth0), "f", clientOptions{blksize: 1400})
		if err != nil {
			return fmt.Errorf("over veth0: %w", err)
		}
		if string(res.data) != string(want) {
			return fmt.Errorf("over veth0: %d bytes, want %d, contents differ", len(res.data), len(want))
		}
		return refusedByTheKernel(at(overVeth2))
	})
	if r := ts.result(t); r.err != nil {
		t.Fatal(r.err)
	}
	if err := refusedByTheKernel(at(netip.MustParseAddr("127.0.0.1"))); err != nil {
		t.Fatal(err)
	}

	// "::" takes the IPv4 requests too.
	ts = startServer(t, "::", "--interface", "veth0", "--interface", "veth2")
	want = ts.writeFile(t, "f", 20_000)
	if len(ts.addrs) != 2 {
		t.Fatalf("listening on %v, want a socket for each interface", ts.addrs)
	}
	for i, over := range []netip.Addr{overVeth0, overVeth2} {
		to := netip.AddrPortFrom(over, ts.addrs[i].Port())
		var res *clientResult
		inNetnsOf(t, clients.Process.Pid, func() (err error) {
			res, err = tftpGet(to, "f", clientOptions{blksize: 1400})
			return err
		})
		assertSame(t, res.data, want)
		if r := ts.result(t); r.err != nil {
			t.Fatal(r.err)
		}
	}
}

// startNetnsHolder starts a process in a network namespace of its own and
// returns once it is there; it is killed when the test ends.
func startNetnsHolder(t *testing.T) *exec.Cmd {
	t.Helper()
	holder := exec.Command("unshare", "--net", "--", "sleep", "600")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	ours, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		if theirs, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", holder.Process.Pid)); err == nil && theirs != ours {
			return holder
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("unshare --net did not make a namespace within 10 s")
		}
	}
}

// inNetnsOf runs f on a thread of its own in the network namespace of
// process pid, so the sockets f opens are that namespace's, and fails the
// test with f's error.
func inNetnsOf(t *testing.T, pid int, f func() error) {
	t.Helper()
	done := make(chan error)
	go func() {
		// Never unlocked: the thread, in the other namespace, ends with
		// this goroutine.
		runtime.LockOSThread()
		ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			done <- err
			return
		}
		err = unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET)
		ns.Close()
		if err != nil {
			done <- err
			return
		}
		done <- f()
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// refusedByTheKernel sends a read request to addr on a connected socket and
// returns nil when the kernel answers it with port unreachable (the read
// fails with ECONNREFUSED): no socket took it, and nothing else answered.
func refusedByTheKernel(to netip.AddrPort) error {
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.Write(rrq("f", "octet")); err != nil {
		return err
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1024)
	if n, err := conn.Read(buf); !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("a request to %v got %q, %v; want it refused by the kernel", to, buf[:n], err)
	}
	return nil
}

// requestFirstReply sends a read request for "f" to addr and returns the first
// datagram that comes back and where it came from.
func requestFirstReply(t *testing.T, to netip.AddrPort, broadcast bool) ([]byte, netip.AddrPort) {
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
	cmd.Env = append(os.Environ(), inNetnsEnv+"=1", serverBinaryEnv+"="+serverBinary)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+test) {
		t.Fatalf("in a new network namespace: %v\n%s", err, out)
	}
}

// TestClientMACInOwnNetworkNamespace: a client on a directly attached link
// (a veth pair to a second namespace, its MAC address set by the test) is
// named by its MAC address in the summary line and the hook's
// environment, over IPv4 and IPv6; a client on loopback has none.
func TestClientMACInOwnNetworkNamespace(t *testing.T) {
	if os.Getenv(inNetnsEnv) == "" {
		reexecInNetns(t, "TestClientMACInOwnNetworkNamespace")
		return
	}
	const mac = "02:42:c0:00:02:07"
	inClient := macClientNamespace(t, mac)
	root, runs := t.TempDir(), t.TempDir()
	want := randomBytes(5000, 140)
	os.WriteFile(filepath.Join(root, "f"), want, 0o644)
	srv := startBinary(t, exec.Command(serverBinary, "-l", "::", "-p", "0", "-r", root,
		"--hook", "/bin/sh "+writeScript(t, recordingHook)+" "+runs))
	port := strconv.Itoa(int(srv.addr.Port()))
	for _, host := range []string{"192.0.2.1", "[2001:db8::1]"} {
		assertSame(t, curlIn(t, inClient, "tftp://"+host+":"+port+"/f"), want)
		if line := srv.awaitLog(t, `msg="transfer complete"`); !strings.Contains(line, " mac="+mac) {
			t.Fatalf("summary line %q does not name the client's MAC %s", line, mac)
		}
		srv.awaitLog(t, `msg="hook ran"`)
	}
	// From this namespace's own address the client is local: no MAC.
	res, err := tftpGet(netip.MustParseAddrPort("192.0.2.1:"+port), "f", clientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
	if line := srv.awaitLog(t, `msg="transfer complete"`); strings.Contains(line, "mac=") {
		t.Fatalf("summary line %q names a MAC for a local client", line)
	}
	srv.awaitLog(t, `msg="hook ran"`)
	byClient := map[string]string{}
	files, _ := filepath.Glob(filepath.Join(runs, "run.*"))
	for _, f := range files {
		env := hookRun(t, f)
		byClient[env["TFTP_CLIENT"]] = env["TFTP_CLIENT_MAC"]
	}
	if len(byClient) != 3 || byClient["192.0.2.2"] != mac || byClient["2001:db8::2"] != mac || byClient["192.0.2.1"] != "" {
		t.Fatalf("TFTP_CLIENT_MAC by client: %q; want %s for 192.0.2.2 and 2001:db8::2, none for 192.0.2.1", byClient, mac)
	}
}

// TestBlksizeFitsInterfaceMTUInOwnNetworkNamespace: a client that asks for
// blocks of 8192 bytes over a veth link of MTU 1400 is granted what fits
// one datagram of that link (1400 less the IP, UDP and TFTP headers: 1368
// over IPv4, 1348 over IPv6), and over loopback (MTU 65536) what it asks.
// The server's ioctl lookup also agrees with netlink's interface table for
// every interface of the namespace.
func TestBlksizeFitsInterfaceMTUInOwnNetworkNamespace(t *testing.T) {
	if os.Getenv(inNetnsEnv) == "" {
		reexecInNetns(t, "TestBlksizeFitsInterfaceMTUInOwnNetworkNamespace")
		return
	}
	inClient := macClientNamespace(t, "02:42:c0:00:02:08")
	runIP(t, nil, [][]string{{"link", "set", "veth0", "mtu", "1400"}})
	runIP(t, inClient, [][]string{{"link", "set", "veth1", "mtu", "1400"}})
	interfaces, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, ifi := range interfaces {
		if mtu, err := interfaceMTU(ifi.Index); err != nil || mtu != ifi.MTU {
			t.Errorf("interfaceMTU(%d) of %s = %d, %v; netlink says %d", ifi.Index, ifi.Name, mtu, err, ifi.MTU)
		}
	}
	root := t.TempDir()
	want := randomBytes(100_000, 141)
	os.WriteFile(filepath.Join(root, "f"), want, 0o644)
	srv := startBinary(t, exec.Command(serverBinary, "-l", "::", "-p", "0", "-r", root))
	port := strconv.Itoa(int(srv.addr.Port()))
	for host, blksize := range map[string]string{"192.0.2.1": "1368", "[2001:db8::1]": "1348"} {
		assertSame(t, curlIn(t, inClient, "tftp://"+host+":"+port+"/f", "--tftp-blksize", "8192"), want)
		if line := srv.awaitLog(t, `msg="transfer complete"`); !strings.Contains(line, " blksize="+blksize+" ") {
			t.Fatalf("over the veth of MTU 1400 to %s: summary line %q, want blksize=%s", host, line, blksize)
		}
	}
	res, err := tftpGet(netip.MustParseAddrPort("127.0.0.1:"+port), "f", clientOptions{blksize: 8192})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, want)
	if line := srv.awaitLog(t, `msg="transfer complete"`); !strings.Contains(line, " blksize=8192 ") {
		t.Fatalf("over loopback: summary line %q, want blksize=8192", line)
	}
}

// TestMapFileMACRuleInOwnNetworkNamespace: a --map-file rule with \m maps
// pxelinux's default name to the per-client file of a client on a directly
// attached link (a veth pair whose MAC the test set), over IPv4 and IPv6,
// with the same MAC on the summary line; for a local client and over
// loopback, where no MAC is known, the rule does not fire and the default
// is served.
func TestMapFileMACRuleInOwnNetworkNamespace(t *testing.T) {
	if os.Getenv(inNetnsEnv) == "" {
		reexecInNetns(t, "TestMapFileMACRuleInOwnNetworkNamespace")
		return
	}
	const mac = "02:42:c0:00:02:07"
	inClient := macClientNamespace(t, mac)
	root, dir := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(root, "pxelinux.cfg"), 0o755)
	deflt, own := randomBytes(700, 1), randomBytes(900, 2)
	os.WriteFile(filepath.Join(root, "pxelinux.cfg/default"), deflt, 0o644)
	os.WriteFile(filepath.Join(root, "pxelinux.cfg/01-02-42-c0-00-02-07"), own, 0o644)
	rules := filepath.Join(dir, "map.rules")
	os.WriteFile(rules, []byte(`r ^pxelinux.cfg/default$ pxelinux.cfg/01-\m`+"\n"), 0o644)
	srv := startBinary(t, exec.Command(serverBinary, "-l", "::", "-p", "0", "-r", root, "--map-file", rules))
	port := strconv.Itoa(int(srv.addr.Port()))
	for _, host := range []string{"192.0.2.1", "[2001:db8::1]"} {
		assertSame(t, curlIn(t, inClient, "tftp://"+host+":"+port+"/pxelinux.cfg/default"), own)
		line := srv.awaitLog(t, `msg="transfer complete"`)
		if !strings.Contains(line, " mac="+mac) || !strings.Contains(line, " mapped=pxelinux.cfg/01-02-42-c0-00-02-07") {
			t.Fatalf("summary line %q does not name the MAC %s and the per-client file", line, mac)
		}
	}
	for _, host := range []string{"192.0.2.1", "127.0.0.1", "[::1]"} {
		res, err := tftpGet(netip.MustParseAddrPort(host+":"+port), "pxelinux.cfg/default", clientOptions{})
		if err != nil {
			t.Fatal(err)
		}
		assertSame(t, res.data, deflt)
		if line := srv.awaitLog(t, `msg="transfer complete"`); strings.Contains(line, "mac=") || strings.Contains(line, "mapped=") {
			t.Fatalf("summary line %q: a client without a known MAC was mapped by its MAC", line)
		}
	}
}

// macClientNamespace makes the client's network namespace at the far end
// of a veth pair whose client end has MAC address mac: 192.0.2.1 and
// 2001:db8::1 on this end, 192.0.2.2 and 2001:db8::2 on the client's. It
// returns the command prefix that runs a program in the client's namespace.
func macClientNamespace(t *testing.T, mac string) []string {
	t.Helper()
	nsenter := needClient(t, "nsenter")
	// The client's namespace lives as long as this process in it.
	holder := exec.Command("unshare", "--net", "--", "sh", "-c", "echo ready; exec sleep 120")
	stdout, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("the client's namespace: %q, %v", line, err)
	}
	inClient := []string{nsenter, "-t", strconv.Itoa(holder.Process.Pid), "-n"}
	runIP(t, nil, [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", strconv.Itoa(holder.Process.Pid)},
		{"link", "set", "veth0", "up"},
		{"addr", "add", "192.0.2.1/24", "dev", "veth0"},
		{"addr", "add", "2001:db8::1/64", "dev", "veth0", "nodad"},
	})
	runIP(t, inClient, [][]string{
		{"link", "set", "lo", "up"},
		{"link", "set", "veth1", "address", mac},
		{"link", "set", "veth1", "up"},
		{"addr", "add", "192.0.2.2/24", "dev", "veth1"},
		{"addr", "add", "2001:db8::2/64", "dev", "veth1", "nodad"},
	})
	awaitLinkReady(t, nil, "veth0")
	awaitLinkReady(t, inClient, "veth1")
	return inClient
}

// curlIn fetches url with curl, given options, in the namespace that
// command prefix in enters, and returns what it wrote.
func curlIn(t *testing.T, in []string, url string, options ...string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	argv := append(slices.Clone(in), needClient(t, "curl"), "-sS", "--max-time", "30")
	argv = append(append(argv, options...), "-o", out, url)
	if msg, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("curl %s from the client's namespace: %v\n%s", url, err, msg)
	}
	return readFile(t, out)
}

// neighbourEntry is an RTM_NEWNEIGH body as the kernel writes it: an
// ndmsg, then NDA_DST and NDA_LLADDR attributes, each padded to 4 bytes.
func neighbourEntry(ifindex int32, state uint16, dst netip.Addr, lladdr []byte) []byte {
	b := make([]byte, 12)
	b[0] = byte(unix.AF_INET)
	if dst.Is6() {
		b[0] = byte(unix.AF_INET6)
	}
	binary.NativeEndian.PutUint32(b[4:], uint32(ifindex))
	binary.NativeEndian.PutUint16(b[8:], state)
	attr := func(kind uint16, value []byte) {
		b = binary.NativeEndian.AppendUint16(b, uint16(4+len(value)))
		b = binary.NativeEndian.AppendUint16(b, kind)
		b = append(b, value...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	attr(unix.NDA_DST, dst.AsSlice())
	attr(unix.NDA_LLADDR, lladdr)
	return b
}

// TestNeighbourEntryMAC: the MAC address of a resolved entry for the
// client on its interface, and none for another address, another
// interface, an unresolved entry or an empty address.
func TestNeighbourEntryMAC(t *testing.T) {
	client := netip.MustParseAddr("192.0.2.2")
	mac := []byte{0x02, 0x42, 0xc0, 0, 2, 7}
	for _, c := range []struct {
		entry   []byte
		ifindex int
		want    string
	}{
		{neighbourEntry(3, unix.NUD_REACHABLE, client, mac), 3, "02:42:c0:00:02:07"},
		{neighbourEntry(3, unix.NUD_STALE, client, mac), 0, "02:42:c0:00:02:07"},
		{neighbourEntry(3, unix.NUD_REACHABLE, netip.MustParseAddr("2001:db8::2"), mac), 3, ""},
		{neighbourEntry(3, unix.NUD_REACHABLE, netip.MustParseAddr("192.0.2.3"), mac), 3, ""},
		{neighbourEntry(4, unix.NUD_REACHABLE, client, mac), 3, ""},
		{neighbourEntry(3, unix.NUD_INCOMPLETE, client, mac), 3, ""},
		{neighbourEntry(3, unix.NUD_FAILED, client, mac), 3, ""},
		{neighbourEntry(3, unix.NUD_REACHABLE, client, make([]byte, 6)), 3, ""},
		{neighbourEntry(3, unix.NUD_REACHABLE, client, mac)[:20], 3, ""},
	} {
		if got := neighbourEntryMAC(c.entry, client, c.ifindex); got != c.want {
			t.Errorf("entry %x on ifindex %d: %q, want %q", c.entry, c.ifindex, got, c.want)
		}
	}
}

// FuzzNeighbourEntry: any bytes are read without a panic, and an address
// found is one the entry holds.
func FuzzNeighbourEntry(f *testing.F) {
	f.Add(neighbourEntry(3, unix.NUD_REACHABLE, netip.MustParseAddr("192.0.2.2"), []byte{2, 0x42, 0xc0, 0, 2, 7}), "192.0.2.2", 3)
	f.Add(neighbourEntry(2, unix.NUD_STALE, netip.MustParseAddr("fe80::1"), []byte{2, 0, 0, 0, 0, 1}), "fe80::1", 0)
	f.Fuzz(func(t *testing.T, entry []byte, client string, ifindex int) {
		want, err := netip.ParseAddr(client)
		if err != nil {
			return
		}
		mac := neighbourEntryMAC(entry, want, ifindex)
		if mac == "" {
			return
		}
		hw, err := net.ParseMAC(mac)
		if err != nil || !bytes.Contains(entry, hw) || !bytes.Contains(entry, want.AsSlice()) {
			t.Fatalf("%x for %s: MAC %q is not in the entry", entry, client, mac)
		}
	})
}
