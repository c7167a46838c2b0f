// Real clients as the judge: curl, tftp-hpa, atftp and busybox fetch from
// and upload to the server over IPv4, IPv6 and the single port, with the
// options each can ask for, at sizes around the block boundaries and past
// 65535 blocks; every file arrives exact and the server negotiated what the
// case says. The argument builders here are the one place each client's
// command line is written, for the other tests that run real clients too.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// needClient finds a real client on PATH. Without it the test is skipped,
// except under CI=true, where a missing client is a failure.
func needClient(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("client %s is not installed (CI=true)", name)
		}
		t.Skipf("client %s is not installed", name)
	}
	return path
}

// interopCase is one run of a real client: args builds its command line for
// the server's host and port, the remote name and the local file (written
// by a download, read by an upload).
type interopCase struct {
	client string
	name   string
	args   func(host, port, remote, local string) []string
	// blksize and windowsize are what the server must have negotiated.
	blksize, windowsize int
}

// runInterop runs every case for every size in one direction: op opRRQ
// fetches files the server holds, opWRQ uploads them into its upload
// folder. The bytes must arrive exact, the server must report success and
// the blksize and windowsize of the case.
func runInterop(t *testing.T, op uint16, listen string, serverArgs []string, cases []interopCase, sizes []int) {
	var ts *testServer
	var dir string // where uploads land
	files := map[int][]byte{}
	if op == opWRQ {
		ts, dir = startUploadServer(t, listen, serverArgs...)
	} else {
		ts = startServer(t, listen, serverArgs...)
		for _, size := range sizes {
			files[size] = ts.writeFile(t, "file-"+strconv.Itoa(size), size)
		}
	}
	src := t.TempDir()
	host, port := ts.addr.Addr().String(), strconv.Itoa(int(ts.addr.Port()))
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, size := range sizes {
				remote, want := "file-"+strconv.Itoa(size), files[size]
				if op == opRRQ {
					assertSame(t, fetchWithClient(t, c, host, port, remote), want)
				} else {
					want = randomBytes(size, int64(size))
					local := filepath.Join(src, remote)
					if err := os.WriteFile(local, want, 0o644); err != nil {
						t.Fatal(err)
					}
					remote = fmt.Sprintf("up-%d-%d", i, size)
					runClient(t, c, host, port, remote, local)
				}
				r := ts.result(t)
				if r.err != nil {
					t.Fatalf("server: %v", r.err)
				}
				if op == opWRQ {
					assertSame(t, readFile(t, filepath.Join(dir, remote)), want)
				}
				if r.blksize != c.blksize || r.windowsize != c.windowsize {
					t.Fatalf("negotiated blksize %d windowsize %d, want %d and %d", r.blksize, r.windowsize, c.blksize, c.windowsize)
				}
				t.Logf("%s %s: %d bytes, blksize %d, windowsize %d", c.name, remote, size, r.blksize, r.windowsize)
			}
		})
	}
}

// runClient runs a real client for one transfer and returns its output; it
// fails the test when the client fails or takes more than a minute.
func runClient(t *testing.T, c interopCase, host, port, remote, local string) []byte {
	t.Helper()
	bin := needClient(t, c.client)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, c.args(host, port, remote, local)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", c.name, remote, err, out)
	}
	return out
}

// fetchWithClient runs a real client for one file and returns what it wrote.
func fetchWithClient(t *testing.T, c interopCase, host, port, remote string) []byte {
	t.Helper()
	local := filepath.Join(t.TempDir(), "out")
	out := runClient(t, c, host, port, remote, local)
	got, err := os.ReadFile(local)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", c.name, remote, err, out)
	}
	return got
}

// curlArgs is curl fetching (op opRRQ) or uploading (opWRQ) a tftp:// URL,
// with extra options after it.
func curlArgs(op uint16, extra ...string) func(host, port, remote, local string) []string {
	flag := "-o"
	if op == opWRQ {
		flag = "-T"
	}
	return func(host, port, remote, local string) []string {
		url := fmt.Sprintf("tftp://%s/%s", net.JoinHostPort(host, port), remote)
		return append([]string{"-sS", flag, local, url}, extra...)
	}
}

// atftpArgs is atftp's --get or --put, each of options as an --option.
func atftpArgs(op uint16, options ...string) func(host, port, remote, local string) []string {
	return func(host, port, remote, local string) []string {
		args := []string{"--get", "-r", remote, "-l", local}
		if op == opWRQ {
			args = []string{"--put", "-l", local, "-r", remote}
		}
		for _, o := range options {
			args = append(args, "--option", o)
		}
		return append(args, host, port)
	}
}

// tftpHPAArgs is tftp-hpa's get or put in binary mode, over IPv6 with -6.
func tftpHPAArgs(op uint16, ipv6 bool) func(host, port, remote, local string) []string {
	return func(host, port, remote, local string) []string {
		args := []string{"-m", "binary", host, port, "-c", "get", remote, local}
		if op == opWRQ {
			args = []string{"-m", "binary", host, port, "-c", "put", local, remote}
		}
		if ipv6 {
			args = append([]string{"-6"}, args...)
		}
		return args
	}
}

// busyboxArgs is busybox tftp's -g or -p, asking for blksize unless it is 0.
func busyboxArgs(op uint16, blksize int) func(host, port, remote, local string) []string {
	return func(host, port, remote, local string) []string {
		args := []string{"tftp", "-g", "-r", remote, "-l", local}
		if op == opWRQ {
			args = []string{"tftp", "-p", "-l", local, "-r", remote}
		}
		if blksize > 0 {
			args = append(args, "-b", strconv.Itoa(blksize))
		}
		return append(args, host, port)
	}
}

// Sizes around the block boundaries, and one past 65535 blocks of 8 bytes
// is covered by the in-process tests; these are what real clients must get.
var interopSizes = []int{0, 1, 511, 512, 513, 1468 * 2, 200_000}

func TestRealClientsIPv4(t *testing.T) {
	runInterop(t, opRRQ, "127.0.0.1", nil, []interopCase{
		{"curl", "curl default", curlArgs(opRRQ), 512, 1},
		{"curl", "curl blksize 1468", curlArgs(opRRQ, "--tftp-blksize", "1468"), 1468, 1},
		{"curl", "curl blksize 50000", curlArgs(opRRQ, "--tftp-blksize", "50000"), 50000, 1},
		{"curl", "curl no options", curlArgs(opRRQ, "--tftp-no-options"), 512, 1},
		{"tftp", "tftp-hpa", tftpHPAArgs(opRRQ, false), 512, 1},
		{"atftp", "atftp plain", atftpArgs(opRRQ), 512, 1},
		{"atftp", "atftp blksize 1468 windowsize 16 tsize", atftpArgs(opRRQ, "blksize 1468", "windowsize 16", "tsize 0"), 1468, 16},
		{"atftp", "atftp windowsize 4", atftpArgs(opRRQ, "windowsize 4"), 512, 4},
		{"atftp", "atftp blksize 8192 windowsize 64 lowered to fit", atftpArgs(opRRQ, "blksize 8192", "windowsize 64"), 8192, 12},
		{"busybox", "busybox", busyboxArgs(opRRQ, 0), 512, 1},
		{"busybox", "busybox blksize 1468", busyboxArgs(opRRQ, 1468), 1468, 1},
	}, interopSizes)
}

func TestRealClientsIPv6(t *testing.T) {
	runInterop(t, opRRQ, "::1", nil, []interopCase{
		{"curl", "curl blksize 1448", curlArgs(opRRQ, "--tftp-blksize", "1448"), 1448, 1},
		{"tftp", "tftp-hpa", tftpHPAArgs(opRRQ, true), 512, 1},
		{"atftp", "atftp windowsize 16", atftpArgs(opRRQ, "blksize 1448", "windowsize 16"), 1448, 16},
		{"busybox", "busybox", busyboxArgs(opRRQ, 1448), 1448, 1},
	}, []int{513, 200_000})
}

func TestRealClientsSinglePort(t *testing.T) {
	for _, listen := range loopbacks {
		runInterop(t, opRRQ, listen, []string{"--single-port"}, []interopCase{
			{"curl", "curl", curlArgs(opRRQ, "--tftp-blksize", "1024"), 1024, 1},
			{"tftp", "tftp-hpa", tftpHPAArgs(opRRQ, false), 512, 1},
			{"atftp", "atftp windowsize 16", atftpArgs(opRRQ, "blksize 1024", "windowsize 16"), 1024, 16},
			{"busybox", "busybox", busyboxArgs(opRRQ, 1024), 1024, 1},
		}, []int{0, 1024, 100_000})
	}
}

// TestRealClientsRecoverALostFirstReply: each real client gets the whole
// file when the server's first reply (OACK or DATA 1) is lost, by its own
// repeat of the request (answered with the reply again at once) or by the
// server's first timeout, whichever comes first. The log says how long
// each took.
func TestRealClientsRecoverALostFirstReply(t *testing.T) {
	ts := startServer(t, "127.0.0.1", "-t", "3")
	want := ts.writeFile(t, "f", 20_000)
	for _, c := range []interopCase{
		{"curl", "curl (OACK)", curlArgs(opRRQ), 512, 1},
		{"curl", "curl no options (DATA 1)", curlArgs(opRRQ, "--tftp-no-options"), 512, 1},
		{"tftp", "tftp-hpa (DATA 1)", tftpHPAArgs(opRRQ, false), 512, 1},
		{"atftp", "atftp (DATA 1)", atftpArgs(opRRQ), 512, 1},
		{"atftp", "atftp windowsize 16 (OACK)", atftpArgs(opRRQ, "windowsize 16"), 512, 16},
		{"busybox", "busybox (DATA 1)", busyboxArgs(opRRQ, 0), 512, 1},
		{"busybox", "busybox blksize 1468 (OACK)", busyboxArgs(opRRQ, 1468), 1468, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			relay := startRelay(t, ts.addr, impairment{dropFirstReply: true})
			start := time.Now()
			got := fetchWithClient(t, c, "127.0.0.1", strconv.Itoa(int(relay.addr().Port())), "f")
			t.Logf("%s: %v with the first reply lost", c.name, time.Since(start).Round(time.Millisecond))
			assertSame(t, got, want)
			if r := ts.result(t); r.err != nil {
				t.Fatalf("session: %v", r.err)
			}
		})
	}
}

var uploadSizes = []int{0, 1, 511, 512, 513, 200_000}

func TestUploadRealClientsIPv4(t *testing.T) {
	runInterop(t, opWRQ, "127.0.0.1", nil, []interopCase{
		{"curl", "curl", curlArgs(opWRQ), 512, 1},
		{"curl", "curl blksize 1468", curlArgs(opWRQ, "--tftp-blksize", "1468"), 1468, 1},
		{"tftp", "tftp-hpa", tftpHPAArgs(opWRQ, false), 512, 1},
		{"atftp", "atftp", atftpArgs(opWRQ), 512, 1},
		{"atftp", "atftp blksize 1468 windowsize 16", atftpArgs(opWRQ, "blksize 1468", "windowsize 16"), 1468, 16},
		{"busybox", "busybox", busyboxArgs(opWRQ, 0), 512, 1},
		{"busybox", "busybox blksize 1468", busyboxArgs(opWRQ, 1468), 1468, 1},
	}, uploadSizes)
}

func TestUploadRealClientsIPv6(t *testing.T) {
	runInterop(t, opWRQ, "::1", nil, []interopCase{
		{"curl", "curl blksize 1448", curlArgs(opWRQ, "--tftp-blksize", "1448"), 1448, 1},
		{"tftp", "tftp-hpa", tftpHPAArgs(opWRQ, true), 512, 1},
		{"atftp", "atftp blksize 1448 windowsize 16", atftpArgs(opWRQ, "blksize 1448", "windowsize 16"), 1448, 16},
		{"busybox", "busybox", busyboxArgs(opWRQ, 1448), 1448, 1},
	}, []int{0, 513, 200_000})
}

func TestUploadRealClientsSinglePort(t *testing.T) {
	for _, listen := range loopbacks {
		runInterop(t, opWRQ, listen, []string{"--single-port"}, []interopCase{
			{"curl", "curl", curlArgs(opWRQ, "--tftp-blksize", "1024"), 1024, 1},
			{"tftp", "tftp-hpa", tftpHPAArgs(opWRQ, listen == "::1"), 512, 1},
			// The listener queues 8 datagrams per single-port transfer.
			{"atftp", "atftp windowsize 16 lowered to 8", atftpArgs(opWRQ, "blksize 1024", "windowsize 16"), 1024, 8},
			{"busybox", "busybox", busyboxArgs(opWRQ, 1024), 1024, 1},
		}, []int{0, 1024, 100_000})
	}
}

// TestUploadRealClientsRollover: 8-byte blocks, 70,000 of them, past block
// number 65535.
func TestUploadRealClientsRollover(t *testing.T) {
	runInterop(t, opWRQ, "127.0.0.1", nil, []interopCase{
		{"atftp", "atftp blksize 8 windowsize 16", atftpArgs(opWRQ, "blksize 8", "windowsize 16"), 8, 16},
		{"curl", "curl blksize 8", curlArgs(opWRQ, "--tftp-blksize", "8"), 8, 1},
	}, []int{8 * 70_000})
}
