//go:build firmware

// Real firmware as the judge: U-Boot, iPXE under SeaBIOS and OVMF's UEFI PXE
// boot in QEMU (TCG) and fetch files from the server binary, all inside a
// network namespace the test makes (bridge, tap, dnsmasq for DHCP only). A
// small console driver reads the guest's serial console and types commands.
// `make firmware-test` runs this file (build tag firmware); ROUNDS sets how
// many rounds of every case, FIRMWARE_LOAD how many busy loops run beside
// the guests, as on a busy build host.
package main

import (
	"bytes"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Bounds on every wait: TCG guests on a shared 2-core machine are slow, so
// they are generous, but every one ends.
const (
	bootDeadline = 120 * time.Second
	// U-Boot gives up a stalled transfer after 10 timeouts of 5 s; a
	// transfer gets that plus time to move 4 MiB under TCG.
	transferDeadline = 120 * time.Second
	commandDeadline  = 30 * time.Second
	// serverLineDeadline bounds the wait for the server's line about a
	// transfer the guest saw end: at once after a success; after a failure,
	// the server's own --timeout 3 x --retries 5 and a margin.
	serverLineDeadline = 30 * time.Second
)

const (
	labServer   = "192.0.2.1"
	firmwareMiB = 4 << 20
)

// firmwareRounds is how many rounds of every case to run: ROUNDS, default 10.
func firmwareRounds(t *testing.T) int {
	s := os.Getenv("ROUNDS")
	if s == "" {
		return 10
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("ROUNDS=%q: want a count of at least 1", s)
	}
	return n
}

// needTools finds programs and files the firmware tests run. Without them
// the test is skipped, except under CI=true, where that is a failure.
func needTools(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		var err error
		if strings.Contains(p, "/") {
			_, err = os.Stat(p)
		} else {
			_, err = exec.LookPath(p)
		}
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is missing (CI=true): %v", p, err)
			}
			t.Skipf("%s is missing: %v", p, err)
		}
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("network namespaces need root (CI=true)")
		}
		t.Skip("network namespaces need root")
	}
}

// transcript collects what a process writes, so a test can wait for a
// pattern with a deadline instead of sleeping. A copy goes to a file.
type transcript struct {
	mu     sync.Mutex
	buf    []byte
	grew   chan struct{} // closed and replaced whenever buf grows or ends
	closed bool
}

func newTranscript(r io.Reader, copyTo io.Writer) *transcript {
	tr := &transcript{grew: make(chan struct{})}
	go func() {
		chunk := make([]byte, 4096)
		for {
			n, err := r.Read(chunk)
			tr.mu.Lock()
			tr.buf = append(tr.buf, chunk[:n]...)
			if err != nil {
				tr.closed = true
			}
			close(tr.grew)
			tr.grew = make(chan struct{})
			tr.mu.Unlock()
			if copyTo != nil && n > 0 {
				copyTo.Write(chunk[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	return tr
}

// await waits until re matches the text from offset from on, and returns
// the match's submatch indexes, absolute.
func (tr *transcript) await(from int, re *regexp.Regexp, timeout time.Duration) ([]int, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		tr.mu.Lock()
		m := re.FindSubmatchIndex(tr.buf[from:])
		closed, grew := tr.closed, tr.grew
		tr.mu.Unlock()
		if m != nil {
			for i := range m {
				if m[i] >= 0 {
					m[i] += from
				}
			}
			return m, nil
		}
		if closed {
			return nil, fmt.Errorf("output ended without %q", re)
		}
		select {
		case <-grew:
		case <-deadline.C:
			return nil, fmt.Errorf("no %q within %v", re, timeout)
		}
	}
}

func (tr *transcript) len() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.buf)
}

func (tr *transcript) text(from, to int) string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return string(tr.buf[from:to])
}

// tail is the last n bytes, for a failure report.
func (tr *transcript) tail(n int) string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return string(tr.buf[max(0, len(tr.buf)-n):])
}

// netns is a network namespace the test made and removes again, with every
// process in it.
type netns struct{ name string }

var netnsSerial atomic.Int32

// nsNameRE names this harness's namespaces: its process id and a serial, so
// one left by a killed run is recognised and removed.
var nsNameRE = regexp.MustCompile(`^rtftpd-fw-(\d+)-\d+$`)

func newNetns(t *testing.T) *netns {
	t.Helper()
	removeStaleNetns(t)
	ns := &netns{fmt.Sprintf("rtftpd-fw-%d-%d", os.Getpid(), netnsSerial.Add(1))}
	if out, err := exec.Command("ip", "netns", "add", ns.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", ns.name, err, out)
	}
	t.Cleanup(func() {
		// Processes the test started are ended by their own cleanups,
		// which run first; one still here was missed.
		if pids := killNetnsProcesses(ns.name); len(pids) > 0 {
			t.Errorf("processes were left in %s: %v; killed them", ns.name, pids)
		}
		if out, err := exec.Command("ip", "netns", "delete", ns.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v\n%s", ns.name, err, out)
		}
		if slices.Contains(listNetns(), ns.name) {
			t.Errorf("namespace %s is still there after its removal", ns.name)
		}
	})
	ns.ip(t, "link", "set", "lo", "up")
	return ns
}

func must(b []byte, _ error) []byte { return b }

// killNetnsProcesses kills what runs in one of this harness's namespaces
// and returns their process ids.
func killNetnsProcesses(name string) []string {
	pids := strings.Fields(string(must(exec.Command("ip", "netns", "pids", name).Output())))
	if len(pids) > 0 {
		exec.Command("kill", append([]string{"-9"}, pids...)...).Run()
	}
	return pids
}

func listNetns() []string {
	var names []string
	for _, line := range strings.Split(string(must(exec.Command("ip", "netns", "list").Output())), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

// removeStaleNetns deletes namespaces of earlier runs whose process is gone.
func removeStaleNetns(t *testing.T) {
	for _, name := range listNetns() {
		m := nsNameRE.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		if _, err := os.Stat("/proc/" + m[1]); err == nil {
			continue
		}
		t.Logf("removing namespace %s left by an earlier run, and its processes %v", name, killNetnsProcesses(name))
		exec.Command("ip", "netns", "delete", name).Run()
	}
}

// ip runs `ip -n NS args...`.
func (ns *netns) ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", ns.name}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s %s: %v\n%s", ns.name, strings.Join(args, " "), err, out)
	}
}

// command runs a program inside the namespace (ip netns exec execs it, so
// the process id is the program's).
func (ns *netns) command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.name, name}, args...)...)
}

// process is a program running in a namespace, its output in a transcript
// and a file, killed when the test ends.
type process struct {
	cmd *exec.Cmd
	out *transcript
	in  io.WriteCloser
}

// dieWithTestBinary has the kernel kill cmd's process once the thread of the
// test binary that starts it exits (PR_SET_PDEATHSIG, kept across the exec
// of `ip netns exec`). That covers the panic of a timed-out `go test`,
// which skips every Cleanup: a U-Boot guest and the busy loops of
// FIRMWARE_LOAD ran on for an hour after one, loading what ran next. The
// test binary's threads end only with it: none of its goroutines locks one.
func dieWithTestBinary(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

func startProcess(t *testing.T, cmd *exec.Cmd, logPath string) *process {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	dieWithTestBinary(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	p := &process{cmd: cmd, out: newTranscript(stdout, logFile), in: in}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logFile.Close()
	})
	return p
}

// stop ends the process now.
func (p *process) stop() {
	p.cmd.Process.Kill()
	p.cmd.Wait()
}

// crossBuild builds a package (the server is ".") static for linux/arch,
// with the Makefile's flags, into the test's temporary folder.
func crossBuild(t *testing.T, pkg, arch string, env ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(pkg)+"-"+arch)
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	build.Env = append(append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch), env...)
	if msg, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building %s for %s %v: %v\n%s", pkg, arch, env, err, msg)
	}
	return out
}

// lab is one namespace with a bridge and a tap for a guest, dnsmasq handing
// out addresses and a boot file name, and the server on 192.0.2.1:69.
type lab struct {
	ns        *netns
	dir, root string
	server    *process
	dhcp      *process
}

func startLab(t *testing.T, serverBin, bootFile string, serverArgs ...string) *lab {
	t.Helper()
	l := &lab{ns: newNetns(t), dir: t.TempDir()}
	l.root = filepath.Join(l.dir, "root")
	os.Mkdir(l.root, 0o755)
	l.ns.ip(t, "link", "add", "br0", "type", "bridge", "forward_delay", "0", "stp_state", "0")
	l.ns.ip(t, "addr", "add", labServer+"/24", "dev", "br0")
	l.ns.ip(t, "tuntap", "add", "dev", "tap0", "mode", "tap")
	l.ns.ip(t, "link", "set", "tap0", "master", "br0")
	l.ns.ip(t, "link", "set", "tap0", "up")
	l.ns.ip(t, "link", "set", "br0", "up")

	l.dhcp = startProcess(t, l.ns.command("dnsmasq", "--port=0", "--conf-file=/dev/null",
		"--interface=br0", "--bind-interfaces", "--dhcp-range=192.0.2.50,192.0.2.99,255.255.255.0,1h",
		"--dhcp-boot="+bootFile+",,"+labServer, "--dhcp-leasefile="+filepath.Join(l.dir, "leases"),
		"--pid-file="+filepath.Join(l.dir, "dnsmasq.pid"), "--user=root", "--group=root", // its own group's change would clear dieWithTestBinary's signal
		"--keep-in-foreground", "--log-facility=-", "--log-dhcp"), filepath.Join(l.dir, "dnsmasq.log"))
	if _, err := l.dhcp.out.await(0, regexp.MustCompile(`DHCP, IP range`), commandDeadline); err != nil {
		t.Fatalf("dnsmasq: %v\n%s", err, l.dhcp.out.tail(2000))
	}

	l.server = startProcess(t, l.ns.command(serverBin, append([]string{"--listen", labServer, "--port", "69",
		"--root", l.root, "--log-level", "debug"}, serverArgs...)...), filepath.Join(l.dir, "server.log"))
	if _, err := l.server.out.await(0, regexp.MustCompile(`msg=listening`), commandDeadline); err != nil {
		t.Fatalf("server: %v\n%s", err, l.server.out.tail(2000))
	}
	return l
}

// serverTail is the end of the server's log, for a failure report.
func (l *lab) serverTail() string { return l.server.out.tail(6000) }

func (l *lab) writeFile(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(l.root, name), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// transferLine is the server's one line about a finished transfer.
type transferLine struct {
	msg    string // transfer complete, transfer failed, transfer ended by the client
	fields map[string]string
	end    int // offset after the line in the server's log
}

func (tl transferLine) int(key string) int {
	n, err := strconv.Atoi(tl.fields[key])
	if err != nil {
		return -1
	}
	return n
}

var (
	transferLineRE = regexp.MustCompile(`(?m)^.*msg="(transfer (?:complete|failed|ended by the client))".*\n`)
	logFieldRE     = regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\S+)`)
)

// awaitTransfer waits for the server's line about a transfer of file that
// ended after offset from in its log, by a client whose address starts with
// client.
func awaitTransfer(log *transcript, from int, file, client string, timeout time.Duration) (transferLine, error) {
	deadline := time.Now().Add(timeout)
	for {
		m, err := log.await(from, transferLineRE, time.Until(deadline))
		if err != nil {
			return transferLine{}, err
		}
		line := transferLine{msg: log.text(m[2], m[3]), fields: map[string]string{}, end: m[1]}
		for _, f := range logFieldRE.FindAllStringSubmatch(log.text(m[0], m[1]), -1) {
			line.fields[f[1]] = strings.Trim(f[2], `"`)
		}
		if line.fields["file"] == file && strings.HasPrefix(line.fields["client"], client) {
			return line, nil
		}
		from = m[1]
	}
}

// guest is a QEMU machine in the lab's namespace, driven through its serial
// console (QEMU's stdout with -nographic).
type guest struct {
	*process
	cursor int // what expect has consumed
}

var guestSerial atomic.Int32

func (l *lab) startGuest(t *testing.T, name string, args ...string) *guest {
	t.Helper()
	args = append(args, "-accel", "tcg", "-smp", "1", "-nographic", "-no-reboot",
		"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no")
	return &guest{process: startProcess(t, l.ns.command(name, args...), filepath.Join(l.dir, fmt.Sprintf("console-%d.log", guestSerial.Add(1))))}
}

// expect waits for re in the console output after what earlier calls took,
// and returns the output up to the end of the match and the submatches.
func (g *guest) expect(re *regexp.Regexp, timeout time.Duration) (string, []string, error) {
	m, err := g.out.await(g.cursor, re, timeout)
	if err != nil {
		return "", nil, err
	}
	text := g.out.text(g.cursor, m[1])
	var sub []string
	for i := 0; i < len(m); i += 2 {
		if m[i] < 0 {
			sub = append(sub, "")
		} else {
			sub = append(sub, g.out.text(m[i], m[i+1]))
		}
	}
	g.cursor = m[1]
	return text, sub, nil
}

// run types a command line, waits for its echo, then for re.
func (g *guest) run(line string, re *regexp.Regexp, timeout time.Duration) (string, error) {
	if _, err := io.WriteString(g.in, line+"\n"); err != nil {
		return "", err
	}
	if _, _, err := g.expect(regexp.MustCompile(regexp.QuoteMeta(line)), commandDeadline); err != nil {
		return "", fmt.Errorf("no echo: %w", err)
	}
	out, _, err := g.expect(re, timeout)
	return out, err
}

// report prints the console's and the server's last output.
func (g *guest) report(t *testing.T, l *lab, format string, args ...any) {
	t.Helper()
	t.Errorf(format+"\n--- guest console (tail) ---\n%s\n--- server log (tail) ---\n%s",
		append(args, g.out.tail(6000), l.serverTail())...)
}

// transferRecord is one transfer as the guest and the server saw it.
type transferRecord struct {
	ok                   bool
	seconds              float64
	retransmits, timeout int // from the server's line; -1 when it wrote none
	note                 string
}

// firmwareResults gathers records per case for the summary table.
type firmwareResults struct {
	mu    sync.Mutex
	order []string
	cases map[string][]transferRecord
}

func (r *firmwareResults) add(name string, rec transferRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cases == nil {
		r.cases = map[string][]transferRecord{}
	}
	if _, ok := r.cases[name]; !ok {
		r.order = append(r.order, name)
	}
	r.cases[name] = append(r.cases[name], rec)
}

// table is the summary: case, transfers, failures, resends per transfer
// (median, max), server timeouts (max), transfers the server wrote no line
// about, seconds (median of the transfers that passed: a failure's seconds
// are mostly the guest's own give-up timer).
func (r *firmwareResults) table() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	b.WriteString("| case | transfers | failures | resends median | resends max | server timeouts max | no server line | seconds median (passed) |\n|---|---|---|---|---|---|---|---|\n")
	for _, name := range r.order {
		recs := r.cases[name]
		var resends, secs []float64
		failures, missing, maxResend, maxTimeouts := 0, 0, 0, 0
		for _, rec := range recs {
			if !rec.ok {
				failures++
			}
			if rec.retransmits < 0 {
				missing++
			} else {
				resends = append(resends, float64(rec.retransmits))
				maxResend = max(maxResend, rec.retransmits)
				maxTimeouts = max(maxTimeouts, rec.timeout)
			}
			if rec.ok {
				secs = append(secs, rec.seconds)
			}
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %.0f | %d | %d | %d | %.2f |\n",
			name, len(recs), failures, median(resends), maxResend, maxTimeouts, missing, median(secs))
	}
	return b.String()
}

// startBusyLoops runs FIRMWARE_LOAD copies of `yes > /dev/null` beside the
// guests until the test ends: the busy build host the stall was seen on.
func startBusyLoops(t *testing.T) {
	s := os.Getenv("FIRMWARE_LOAD")
	if s == "" {
		return
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 16 {
		t.Fatalf("FIRMWARE_LOAD=%q: want a count from 0 to 16", s)
	}
	for range n {
		cmd := exec.Command("yes")
		dieWithTestBinary(cmd)
		if err := cmd.Start(); err != nil { // stdout is /dev/null when nil
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	t.Logf("%d busy loops run beside the guests", n)
}

func TestFirmware(t *testing.T) {
	needTools(t, "ip", "dnsmasq", "qemu-system-aarch64", "qemu-system-x86_64",
		ubootBIOS, "/usr/lib/ipxe/qemu/pxe-e1000.rom", ovmfCode, ovmfVars, ipxeSNP)
	rounds := firmwareRounds(t)
	startBusyLoops(t)
	results := &firmwareResults{}
	bin := crossBuild(t, ".", "amd64")
	for _, c := range ubootCases {
		t.Run("uboot-"+c.name, func(t *testing.T) { testUBoot(t, startLab(t, bin, "none", c.serverArgs...), c, rounds, results) })
	}
	t.Run("ipxe-bios", func(t *testing.T) { testIPXE(t, startLab(t, bin, "boot.ipxe"), rounds, results) })
	t.Run("ovmf-pxe", func(t *testing.T) { testOVMF(t, startLab(t, bin, "snponly.efi"), rounds, results) })
	t.Logf("%d rounds, FIRMWARE_LOAD=%q\n%s", rounds, os.Getenv("FIRMWARE_LOAD"), results.table())
}

const (
	ubootBIOS = "/usr/lib/u-boot/qemu_arm64/u-boot.bin"
	ovmfCode  = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars  = "/usr/share/OVMF/OVMF_VARS_4M.fd"
	ipxeSNP   = "/usr/lib/ipxe/snponly.efi"
)

type ubootCase struct {
	name       string
	env        []string // setenv NAME VALUE, before the transfers
	serverArgs []string // the server's flags besides the lab's own
}

var ubootCases = []ubootCase{
	{"default", nil, nil},
	{"blksize512", []string{"tftpblocksize 512"}, nil},
	{"blksize1468-window16", []string{"tftpblocksize 1468", "tftpwindowsize 16"}, nil},
	// A paced transfer's windows wait for their time: neither the guest's
	// timer nor the server's may take that for loss.
	{"blksize1468-window16-max-rate-2M", []string{"tftpblocksize 1468", "tftpwindowsize 16"}, []string{"--max-rate", "2M"}},
}

const transfersPerBoot = 10

var (
	ubootPrompt    = regexp.MustCompile(`\n=> $`)
	ubootAutoboot  = regexp.MustCompile(`Hit any key to stop autoboot`)
	ubootCRC       = regexp.MustCompile(`==> ([0-9a-f]{8})`)
	ubootBytesDone = regexp.MustCompile(`Bytes transferred = (\d+) `)
	// ubootHost numbers the guest's address for each transfer (U-Boot
	// 2023.01 picks its source port itself), so each transfer's server line
	// is told apart from one a stalled session writes late. They are
	// 192.0.2.100-249, outside dnsmasq's range.
	ubootHost atomic.Int32
)

// testUBoot boots U-Boot once per round and fetches a 4 MiB file ten
// times, each checked by U-Boot's crc32 against the host's. After a failed
// transfer U-Boot's virtio-net takes no more packets (every later transfer
// ends in "ARP Retry count exceeded"), so the rest of the round runs in a
// fresh boot rather than counting that as the server's failures.
func testUBoot(t *testing.T, l *lab, c ubootCase, rounds int, results *firmwareResults) {
	data := randomBytes(firmwareMiB, 11)
	l.writeFile(t, "big.bin", data)
	want := fmt.Sprintf("%08x", crc32.ChecksumIEEE(data))
	for round := 1; round <= rounds; round++ {
		for done, boots := 0, 1; done < transfersPerBoot; boots++ {
			g, err := bootUBoot(t, l, c)
			if err != nil {
				g.report(t, l, "round %d boot %d: %v", round, boots, err)
				return
			}
			for done < transfersPerBoot {
				done++
				rec, fatal := ubootTransfer(l, g, want, len(data))
				results.add("U-Boot "+c.name, rec)
				if !rec.ok {
					g.report(t, l, "round %d transfer %d: %s", round, done, rec.note)
				}
				if fatal || !rec.ok {
					break
				}
			}
			g.stop()
		}
	}
}

// bootUBoot starts U-Boot, stops its autoboot and sets up the network.
func bootUBoot(t *testing.T, l *lab, c ubootCase) (*guest, error) {
	g := l.startGuest(t, "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-m", "512",
		"-bios", ubootBIOS, "-device", "virtio-net-pci,netdev=n0")
	if _, _, err := g.expect(ubootAutoboot, bootDeadline); err != nil {
		return g, fmt.Errorf("U-Boot did not boot: %w", err)
	}
	io.WriteString(g.in, " ") // any key; no newline, which would run an empty command
	if _, _, err := g.expect(ubootPrompt, commandDeadline); err != nil {
		return g, fmt.Errorf("no U-Boot prompt: %w", err)
	}
	for _, kv := range append([]string{"netmask 255.255.255.0", "serverip " + labServer}, c.env...) {
		if _, err := g.run("setenv "+kv, ubootPrompt, commandDeadline); err != nil {
			return g, fmt.Errorf("setenv %s: %w", kv, err)
		}
	}
	return g, nil
}

// ubootTransfer clears the load address, fetches the file and checks its
// crc32. fatal says the console stopped answering and the boot is over.
func ubootTransfer(l *lab, g *guest, wantCRC string, size int) (rec transferRecord, fatal bool) {
	ip := fmt.Sprintf("192.0.2.%d", 100+ubootHost.Add(1)%150)
	rec.retransmits, rec.timeout = -1, -1
	for _, cmd := range []string{
		"setenv ipaddr " + ip,
		fmt.Sprintf("mw.b ${kernel_addr_r} 0 %x", size),
	} {
		if _, err := g.run(cmd, ubootPrompt, commandDeadline); err != nil {
			rec.note = fmt.Sprintf("%s: %v", cmd, err)
			return rec, true
		}
	}
	logFrom := l.server.out.len()
	start := time.Now()
	out, err := g.run("tftpboot ${kernel_addr_r} big.bin", ubootPrompt, transferDeadline)
	rec.seconds = time.Since(start).Seconds()
	if err != nil {
		rec.note = fmt.Sprintf("tftpboot did not return: %v", err)
		return rec, true
	}
	got := ubootBytesDone.FindStringSubmatch(out)
	guestTimeouts := strings.Count(out, "T ")
	crcOut, err := g.run(fmt.Sprintf("crc32 ${kernel_addr_r} %x", size), ubootPrompt, commandDeadline)
	if err != nil {
		rec.note = fmt.Sprintf("crc32 did not return: %v", err)
		return rec, true
	}
	crc := ubootCRC.FindStringSubmatch(crcOut)
	switch {
	case got == nil || got[1] != strconv.Itoa(size):
		rec.note = fmt.Sprintf("tftpboot failed after %.1f s (%d timeouts on the guest)", rec.seconds, guestTimeouts)
	case crc == nil || crc[1] != wantCRC:
		rec.note = fmt.Sprintf("crc32 %v, want %s", crc, wantCRC)
	default:
		rec.ok = true
	}
	wait := serverLineDeadline
	if rec.ok {
		wait = commandDeadline
	}
	line, err := awaitTransfer(l.server.out, logFrom, "big.bin", ip+":", wait)
	if err != nil {
		rec.note += fmt.Sprintf("; no server line for the transfer: %v", err)
		if rec.ok {
			rec.ok = false
		}
		return rec, false
	}
	rec.retransmits, rec.timeout = line.int("retransmits"), line.int("timeouts")
	if rec.ok && line.msg != "transfer complete" {
		rec.ok = false
		rec.note = fmt.Sprintf("the guest has the file but the server says %q", line.msg)
	}
	if !rec.ok {
		rec.note += fmt.Sprintf("; server: %s, retransmits %d, timeouts %d, err %q",
			line.msg, rec.retransmits, rec.timeout, line.fields["err"])
	}
	return rec, false
}

// blockCheckScript is a 4 MiB iPXE script of 512-byte chunks. Chunk k checks
// that the chunk run before it was k-1 and records k, so any block of any
// size that is missing, repeated or out of order breaks the chain (a
// displaced chunk fails its iseq, a torn one is a bad command), and only an
// intact file reaches the last chunk's "blocks-verified" line.
func blockCheckScript() []byte {
	const chunk = 512
	n := firmwareMiB / chunk
	var b bytes.Buffer
	for k := range n {
		start := b.Len()
		switch k {
		case 0:
			b.WriteString("#!ipxe\nset p 0\n")
		case n - 1:
			fmt.Fprintf(&b, "iseq ${p} %d || goto bad\necho blocks-verified %d chunks\nexit 0\n:bad\necho blocks-BAD after chunk ${p}\nexit 1\n", k-1, n)
		default:
			fmt.Fprintf(&b, "iseq ${p} %d || goto bad\nset p %d\n", k-1, k)
		}
		pad := chunk - (b.Len() - start)
		tag := fmt.Sprintf("#chunk %d offset %d ", k, k*chunk)
		b.WriteString((tag + strings.Repeat(".", pad))[:pad-1])
		b.WriteByte('\n')
	}
	return b.Bytes()
}

var (
	ipxeVerdict = regexp.MustCompile(`blocks-verified (\d+) chunks|blocks-BAD after chunk \d+|blocks-script-failed|fw-fetch-failed|No bootable device`)
	ipxeFetched = regexp.MustCompile(`fw-fetched`)
	ipxeStarted = regexp.MustCompile(`fw-script-running`)
	ipxeSize    = regexp.MustCompile(`blocks\.ipxe : (\d+) bytes`)
)

// ipxeBootScript is what DHCP names: it fetches the self-checking script,
// shows its size and runs it.
const ipxeBootScript = "#!ipxe\necho fw-script-running\n" +
	"imgfetch tftp://" + labServer + "/blocks.ipxe || goto failed\nimgstat\necho fw-fetched\n" +
	"imgexec blocks.ipxe || echo blocks-script-failed\nexit\n:failed\necho fw-fetch-failed\n"

// testIPXE boots SeaBIOS with iPXE's e1000 ROM once per round: DHCP, a
// script by TFTP, then a 4 MiB self-checking script fetched and run. A
// control boot first serves the script with one 1432-byte block repeated
// and must see the guest reject it, so a pass means the check works.
func testIPXE(t *testing.T, l *lab, rounds int, results *firmwareResults) {
	l.writeFile(t, "boot.ipxe", []byte(ipxeBootScript))
	script := blockCheckScript()
	const block, repeated = 1432, 1000
	damaged := append(slices.Clone(script[:(repeated+1)*block]), script[repeated*block:len(script)-block]...)
	l.writeFile(t, "blocks.ipxe", damaged)
	g, verdict, err := ipxeBoot(t, l)
	g.stop()
	if err != nil || verdict == "" {
		g.report(t, l, "control boot: the guest did not report on a script with block %d repeated: %v", repeated, err)
	} else if strings.HasPrefix(verdict, "blocks-verified") {
		g.report(t, l, "control boot: the guest verified a script with block %d repeated: the check cannot fail", repeated)
	} else {
		t.Logf("control boot: block %d repeated, the guest says %q", repeated, verdict)
	}

	l.writeFile(t, "blocks.ipxe", script)
	for round := 1; round <= rounds; round++ {
		rec := transferRecord{retransmits: -1, timeout: -1}
		logFrom := l.server.out.len()
		start := time.Now()
		g, verdict, err := ipxeBoot(t, l)
		rec.seconds = time.Since(start).Seconds()
		g.stop()
		switch {
		case err != nil:
			rec.note = err.Error()
		case verdict != fmt.Sprintf("blocks-verified %d chunks", len(script)/512):
			rec.note = fmt.Sprintf("the guest says %q", verdict)
		default:
			rec.ok = true
		}
		if line, err := awaitTransfer(l.server.out, logFrom, "blocks.ipxe", "192.0.2.", serverLineDeadline); err != nil {
			rec.ok = false
			rec.note += fmt.Sprintf("; no server line: %v", err)
		} else {
			rec.retransmits, rec.timeout = line.int("retransmits"), line.int("timeouts")
			t.Logf("round %d: %s, blksize %s, %s retransmits, %s", round, line.msg, line.fields["blksize"], line.fields["retransmits"], line.fields["duration"])
		}
		if !rec.ok {
			g.report(t, l, "round %d: %s", round, rec.note)
		}
		results.add("iPXE BIOS 4 MiB imgfetch", rec)
	}
}

// ipxeBoot boots iPXE once and returns the fetched script's verdict line.
func ipxeBoot(t *testing.T, l *lab) (*guest, string, error) {
	g := l.startGuest(t, "qemu-system-x86_64", "-M", "pc", "-m", "256", "-boot", "n",
		"-device", "e1000,netdev=n0")
	if _, _, err := g.expect(ipxeStarted, bootDeadline); err != nil {
		return g, "", fmt.Errorf("no script from DHCP and TFTP: %w", err)
	}
	out, _, err := g.expect(ipxeFetched, transferDeadline)
	if err != nil {
		return g, "", fmt.Errorf("imgfetch did not finish: %w", err)
	}
	if size := ipxeSize.FindStringSubmatch(out); size == nil || size[1] != strconv.Itoa(firmwareMiB) {
		return g, "", fmt.Errorf("imgstat shows %q, want %d bytes", size, firmwareMiB)
	}
	_, sub, err := g.expect(ipxeVerdict, transferDeadline)
	if err != nil {
		return g, "", fmt.Errorf("the fetched script gave no verdict: %w", err)
	}
	return g, sub[0], nil
}

var ovmfBanner = regexp.MustCompile(`iPXE \S+ -- Open Source Network Boot Firmware`)

// testOVMF boots OVMF's own PXE (no option ROM) once per round: it probes
// the size with tsize, aborts with ERROR 8 after the OACK, fetches the file
// again and starts it; snponly.efi's banner proves it ran.
func testOVMF(t *testing.T, l *lab, rounds int, results *firmwareResults) {
	payload, err := os.ReadFile(ipxeSNP)
	if err != nil {
		t.Fatal(err)
	}
	l.writeFile(t, "snponly.efi", payload)
	vars, err := os.ReadFile(ovmfVars)
	if err != nil {
		t.Fatal(err)
	}
	for round := 1; round <= rounds; round++ {
		rec := transferRecord{retransmits: -1, timeout: -1}
		varsCopy := filepath.Join(l.dir, fmt.Sprintf("vars-%d.fd", round))
		os.WriteFile(varsCopy, vars, 0o644)
		logFrom := l.server.out.len()
		g := l.startGuest(t, "qemu-system-x86_64", "-M", "q35", "-m", "512",
			"-drive", "if=pflash,format=raw,readonly=on,file="+ovmfCode,
			"-drive", "if=pflash,format=raw,file="+varsCopy,
			"-device", "virtio-net-pci,netdev=n0,romfile=,bootindex=1")
		start := time.Now()
		_, _, bootErr := g.expect(ovmfBanner, bootDeadline)
		rec.seconds = time.Since(start).Seconds()
		g.stop()
		probe, probeErr := awaitTransfer(l.server.out, logFrom, "snponly.efi", "192.0.2.", serverLineDeadline)
		var fetch transferLine
		fetchErr := probeErr
		if probeErr == nil {
			fetch, fetchErr = awaitTransfer(l.server.out, probe.end, "snponly.efi", "192.0.2.", serverLineDeadline)
		}
		if fetchErr == nil {
			rec.retransmits, rec.timeout = fetch.int("retransmits"), fetch.int("timeouts")
		}
		switch {
		case bootErr != nil:
			rec.note = fmt.Sprintf("no iPXE banner: %v", bootErr)
		case probeErr != nil || fetchErr != nil:
			rec.note = fmt.Sprintf("server lines: %v %v", probeErr, fetchErr)
		case probe.msg != "transfer ended by the client" || probe.fields["windowsize"] != "4":
			rec.note = fmt.Sprintf("the tsize probe ended %q with windowsize %s, want an ERROR from the client after an OACK with windowsize 4", probe.msg, probe.fields["windowsize"])
		case fetch.msg != "transfer complete" || fetch.int("bytes") != len(payload):
			rec.note = fmt.Sprintf("the fetch: %q, %s bytes, want %d bytes complete", fetch.msg, fetch.fields["bytes"], len(payload))
		default:
			rec.ok = true
			t.Logf("round %d: probe ended by the client after %s bytes; fetch blksize %s windowsize %s, %s retransmits, %s",
				round, probe.fields["bytes"], fetch.fields["blksize"], fetch.fields["windowsize"], fetch.fields["retransmits"], fetch.fields["duration"])
		}
		if !rec.ok {
			g.report(t, l, "round %d: %s", round, rec.note)
		}
		results.add("OVMF UEFI PXE snponly.efi", rec)
	}
}
