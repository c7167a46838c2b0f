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
// the server's host and port, the remote name and the local output path.
type interopCase struct {
	client string
	name   string
	args   func(host, port, remote, local string) []string
	// blksize and windowsize are what the server must have negotiated.
	blksize, windowsize int
}

func runInterop(t *testing.T, listen string, serverArgs []string, cases []interopCase, sizes []int) {
	ts := startServer(t, listen, serverArgs...)
	files := map[int][]byte{}
	for _, size := range sizes {
		files[size] = ts.writeFile(t, "file-"+strconv.Itoa(size), size)
	}
	host, port := ts.addr.Addr().String(), strconv.Itoa(int(ts.addr.Port()))
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, size := range sizes {
				remote := "file-" + strconv.Itoa(size)
				assertSame(t, fetchWithClient(t, c, host, port, remote), files[size])
				r := ts.result(t)
				if r.err != nil {
					t.Fatalf("server: %v", r.err)
				}
				if r.blksize != c.blksize || r.windowsize != c.windowsize {
					t.Fatalf("negotiated blksize %d windowsize %d, want %d and %d", r.blksize, r.windowsize, c.blksize, c.windowsize)
				}
				t.Logf("%s %s: %d bytes, blksize %d, windowsize %d", c.client, remote, size, r.blksize, r.windowsize)
			}
		})
	}
}

// fetchWithClient runs a real client for one file and returns what it wrote.
func fetchWithClient(t *testing.T, c interopCase, host, port, remote string) []byte {
	t.Helper()
	bin := needClient(t, c.client)
	local := filepath.Join(t.TempDir(), "out")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, c.args(host, port, remote, local)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", c.name, remote, err, out)
	}
	got, err := os.ReadFile(local)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", c.name, remote, err, out)
	}
	return got
}

func curlArgs(extra ...string) func(host, port, remote, local string) []string {
	return func(host, port, remote, local string) []string {
		url := fmt.Sprintf("tftp://%s/%s", net.JoinHostPort(host, port), remote)
		return append([]string{"-sS", "-o", local, url}, extra...)
	}
}

func atftpArgs(options ...string) func(host, port, remote, local string) []string {
	return func(host, port, remote, local string) []string {
		args := []string{"--get", "-r", remote, "-l", local}
		for _, o := range options {
			args = append(args, "--option", o)
		}
		return append(args, host, port)
	}
}

func tftpHPAArgs(host, port, remote, local string) []string {
	return []string{"-m", "binary", host, port, "-c", "get", remote, local}
}

func busyboxArgs(blksize int) func(host, port, remote, local string) []string {
	return func(host, port, remote, local string) []string {
		args := []string{"tftp", "-g", "-r", remote, "-l", local}
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
	runInterop(t, "127.0.0.1", nil, []interopCase{
		{"curl", "curl default", curlArgs(), 512, 1},
		{"curl", "curl blksize 1468", curlArgs("--tftp-blksize", "1468"), 1468, 1},
		{"curl", "curl blksize 50000", curlArgs("--tftp-blksize", "50000"), 50000, 1},
		{"curl", "curl no options", curlArgs("--tftp-no-options"), 512, 1},
		{"tftp", "tftp-hpa", tftpHPAArgs, 512, 1},
		{"atftp", "atftp plain", atftpArgs(), 512, 1},
		{"atftp", "atftp blksize 1468 windowsize 16 tsize", atftpArgs("blksize 1468", "windowsize 16", "tsize 0"), 1468, 16},
		{"atftp", "atftp windowsize 4", atftpArgs("windowsize 4"), 512, 4},
		{"atftp", "atftp blksize 8192 windowsize 64 lowered to fit", atftpArgs("blksize 8192", "windowsize 64"), 8192, 12},
		{"busybox", "busybox", busyboxArgs(0), 512, 1},
		{"busybox", "busybox blksize 1468", busyboxArgs(1468), 1468, 1},
	}, interopSizes)
}

func TestRealClientsIPv6(t *testing.T) {
	runInterop(t, "::1", nil, []interopCase{
		{"curl", "curl blksize 1448", curlArgs("--tftp-blksize", "1448"), 1448, 1},
		{"tftp", "tftp-hpa", func(host, port, remote, local string) []string {
			return append([]string{"-6"}, tftpHPAArgs(host, port, remote, local)...)
		}, 512, 1},
		{"atftp", "atftp windowsize 16", atftpArgs("blksize 1448", "windowsize 16"), 1448, 16},
		{"busybox", "busybox", busyboxArgs(1448), 1448, 1},
	}, []int{513, 200_000})
}

func TestRealClientsSinglePort(t *testing.T) {
	for _, listen := range loopbacks {
		runInterop(t, listen, []string{"--single-port"}, []interopCase{
			{"curl", "curl", curlArgs("--tftp-blksize", "1024"), 1024, 1},
			{"tftp", "tftp-hpa", tftpHPAArgs, 512, 1},
			{"atftp", "atftp windowsize 16", atftpArgs("blksize 1024", "windowsize 16"), 1024, 16},
			{"busybox", "busybox", busyboxArgs(1024), 1024, 1},
		}, []int{0, 1024, 100_000})
	}
}
