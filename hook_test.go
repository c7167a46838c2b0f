// --hook as an admin meets it: the program runs after each transfer that
// ran, with every outcome's facts in TFTP_* variables and only the admin's
// own arguments; refused requests run nothing; names a client chose (an
// option, shell syntax, newlines, 255 bytes) arrive as values and never as
// commands; a slow hook is killed with what it started, a failing one's
// status and first stderr line are logged; a flood is bounded by the queue
// and no transfer waits for it. The shipped git hook commits what atftp
// uploaded.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// recordingHook is a hook script that writes the arguments and the whole
// environment of each run (NUL-separated, as newlines may be in a value)
// to a file of its own in the folder its first argument names, and one
// line to stderr.
const recordingHook = `#!/bin/sh
{ printf 'ARGC=%s\000ARG1=%s\000' "$#" "$1"; env -0; } > "$1/run.$$"
printf 'ran for %s\n' "$TFTP_OP" >&2
`

// hookRuns reads what recordingHook wrote, by TFTP_FILE.
func hookRuns(t *testing.T, dir string) map[string]map[string]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "run.*"))
	if err != nil {
		t.Fatal(err)
	}
	runs := map[string]map[string]string{}
	for _, f := range files {
		env := hookRun(t, f)
		if _, dup := runs[env["TFTP_FILE"]]; dup {
			t.Fatalf("two hook runs for %q", env["TFTP_FILE"])
		}
		runs[env["TFTP_FILE"]] = env
	}
	return runs
}

// hookRun is the arguments and environment one run of recordingHook wrote.
func hookRun(t *testing.T, file string) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, kv := range strings.Split(string(readFile(t, file)), "\x00") {
		if name, value, ok := strings.Cut(kv, "="); ok {
			env[name] = value
		}
	}
	return env
}

// writeScript puts an executable script in a folder of its own.
func writeScript(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hook.sh")
	if err := os.WriteFile(path, []byte(text), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestHookTellsEachOutcome: a read (through --map-file), an upload, a
// client's abort and a failed upload each run the hook once, with their
// facts; a refused request runs nothing; the server's own TFTP_ and
// systemd variables do not reach the hook.
func TestHookTellsEachOutcome(t *testing.T) {
	root, uploads, runs := t.TempDir(), t.TempDir(), t.TempDir()
	image := randomBytes(70_000, 100)
	os.WriteFile(filepath.Join(root, "boot.img"), image, 0o644)
	rules := filepath.Join(t.TempDir(), "map")
	os.WriteFile(rules, []byte("r ^alias$ boot.img\nr ^probe$ boot.img\n"), 0o644)
	cmd := exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", root, "--upload-dir", uploads,
		"--upload-max-size", "4K", "--map-file", rules, "--hook", "/bin/sh "+writeScript(t, recordingHook)+" "+runs, "--hook-max", "1")
	cmd.Env = append(os.Environ(), "TFTP_OP=forged", "LISTEN_FDS=7")
	srv := startBinary(t, cmd)
	hookRan := func() {
		t.Helper()
		if line := srv.awaitLog(t, `msg="hook ran"`); !strings.Contains(line, "status=0") || !strings.Contains(line, `stderr="ran for `) {
			t.Fatalf("hook log line %q lacks the status or the stderr line", line)
		}
	}

	res, err := tftpGet(srv.addr, "alias", clientOptions{blksize: 1468, tsize: true})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, image)
	hookRan()
	config := randomBytes(3000, 101)
	if _, err := tftpPut(srv.addr, "switch.cfg", config, clientOptions{tsize: true}); err != nil {
		t.Fatal(err)
	}
	hookRan()
	probe := newScriptedPeer(t, srv.addr, rrq("probe", "octet", "tsize", "0"))
	if oack := probe.next(5 * time.Second); oack == nil || oack[1] != opOACK {
		t.Fatalf("tsize probe: %q, want an OACK", oack)
	}
	probe.abort()
	hookRan()
	if _, err := tftpPut(srv.addr, "big.cfg", randomBytes(10_000, 102), clientOptions{}); err == nil {
		t.Fatal("an upload over --upload-max-size was taken")
	}
	hookRan()
	if _, err := tftpGet(srv.addr, "missing", clientOptions{}); err == nil {
		t.Fatal("a missing file was served")
	}
	if _, err := tftpGet(srv.addr, "boot.img", clientOptions{}); err != nil { // after the refusal, in the one worker's order
		t.Fatal(err)
	}
	hookRan()

	got := hookRuns(t, runs)
	if len(got) != 5 || got["missing"] != nil {
		t.Fatalf("hook runs for %d names, want 5 and none for the refused request", len(got))
	}
	sum := sha256.Sum256(config)
	for file, want := range map[string]map[string]string{
		"alias": {"TFTP_OP": "read", "TFTP_NAME": "boot.img", "TFTP_PATH": filepath.Join(root, "boot.img"),
			"TFTP_BYTES": "70000", "TFTP_OUTCOME": "complete", "TFTP_ERROR": "", "TFTP_SHA256": ""},
		"switch.cfg": {"TFTP_OP": "write", "TFTP_NAME": "switch.cfg", "TFTP_PATH": filepath.Join(uploads, "switch.cfg"),
			"TFTP_BYTES": "3000", "TFTP_OUTCOME": "complete", "TFTP_SHA256": hex.EncodeToString(sum[:])},
		"boot.img": {"TFTP_OP": "read", "TFTP_BYTES": "70000", "TFTP_OUTCOME": "complete"},
		"big.cfg": {"TFTP_OP": "write", "TFTP_OUTCOME": "failed", "TFTP_PATH": "", "TFTP_SHA256": "",
			"TFTP_ERROR": "upload larger than the server accepts"},
		"probe": {"TFTP_OP": "read", "TFTP_NAME": "boot.img", "TFTP_BYTES": "0", "TFTP_OUTCOME": "aborted",
			"TFTP_ERROR": "client sent ERROR"},
	} {
		env := got[file]
		for name, value := range want {
			if env[name] != value {
				t.Errorf("%s: %s=%q, want %q", file, name, env[name], value)
			}
		}
		if env["ARGC"] != "1" || env["ARG1"] != runs {
			t.Errorf("%s: the hook got %s arguments, first %q; want only the admin's %q", file, env["ARGC"], env["ARG1"], runs)
		}
		port, err := strconv.Atoi(env["TFTP_CLIENT_PORT"])
		seconds, serr := strconv.ParseFloat(env["TFTP_SECONDS"], 64)
		if env["TFTP_CLIENT"] != "127.0.0.1" || err != nil || port <= 0 || port > 65535 || serr != nil || seconds < 0 || seconds > 30 {
			t.Errorf("%s: client %q port %q seconds %q", file, env["TFTP_CLIENT"], env["TFTP_CLIENT_PORT"], env["TFTP_SECONDS"])
		}
		if _, err := strconv.Atoi(env["TFTP_RETRANSMITS"]); err != nil {
			t.Errorf("%s: TFTP_RETRANSMITS=%q", file, env["TFTP_RETRANSMITS"])
		}
		if _, ok := env["TFTP_CLIENT_MAC"]; ok {
			t.Errorf("%s: a MAC address %q for a client on loopback", file, env["TFTP_CLIENT_MAC"])
		}
		if _, ok := env["LISTEN_FDS"]; ok || env["PATH"] != os.Getenv("PATH") {
			t.Errorf("%s: LISTEN_FDS %q, PATH %q: the server's environment, less its own, should pass", file, env["LISTEN_FDS"], env["PATH"])
		}
	}
}

// TestHookNamesStayValues: names that a shell would run or a program would
// take as an option reach the hook byte for byte as TFTP_FILE and
// TFTP_PATH, and nothing in them is executed.
func TestHookNamesStayValues(t *testing.T) {
	uploads, runs := t.TempDir(), t.TempDir()
	srv := startBinary(t, exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", t.TempDir(), "--upload-dir", uploads,
		"--hook", "/bin/sh "+writeScript(t, recordingHook)+" "+runs))
	names := []string{"-rf", "--help", "$(id>&2)", "; id>&2", "`id>&2`", "a\nb; id>&2\n", "x' \"y\" $HOME *", strings.Repeat("n", 255)}
	for i, name := range names {
		data := randomBytes(600+i, int64(110+i))
		if _, err := tftpPut(srv.addr, name, data, clientOptions{}); err != nil {
			t.Fatalf("upload %q: %v", name, err)
		}
		assertSame(t, readFile(t, filepath.Join(uploads, name)), data)
	}
	for range names {
		if line := srv.awaitLog(t, `msg="hook ran"`); !strings.Contains(line, `stderr="ran for write"`) {
			t.Fatalf("hook log line %q: the hook said something else", line)
		}
	}
	got := hookRuns(t, runs)
	for _, name := range names {
		env := got[name]
		if env == nil || env["TFTP_NAME"] != name || env["TFTP_PATH"] != filepath.Join(uploads, name) || env["ARGC"] != "1" {
			t.Errorf("name %q: hook run %q", name, env)
		}
	}
	if len(got) != len(names) {
		t.Errorf("%d hook runs, want %d", len(got), len(names))
	}
}

// slowOrFailingHook fails for a file named fail, and for one named slow
// starts a child and outlives the timeout, noting the child's process id.
const slowOrFailingHook = `#!/bin/sh
case $TFTP_FILE in
fail) echo "no repository here" >&2; echo "second line" >&2; exit 3 ;;
slow) echo "waiting" >&2; sleep 60 & echo $! > "$1/child"; wait ;;
esac
`

// TestHookTimeoutAndFailure: a hook past --hook-timeout is killed with
// the child it started, a failing hook's status and first stderr line
// are logged, and neither holds up the transfers.
func TestHookTimeoutAndFailure(t *testing.T) {
	root, dir := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(root, "slow"), []byte("s"), 0o644)
	os.WriteFile(filepath.Join(root, "fail"), []byte("f"), 0o644)
	srv := startBinary(t, exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", root,
		"--hook", "/bin/sh "+writeScript(t, slowOrFailingHook)+" "+dir, "--hook-timeout", "0.5", "--metrics", "127.0.0.1:0"))
	metrics := metricsAddr(t, srv)
	start := time.Now()
	for _, name := range []string{"slow", "fail"} {
		if _, err := tftpGet(srv.addr, name, clientOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if took := time.Since(start); took > 400*time.Millisecond {
		t.Errorf("two one-block transfers took %v beside a slow hook", took)
	}
	if line := srv.awaitLog(t, `msg="hook failed"`); !strings.Contains(line, "status=3") || !strings.Contains(line, `stderr="no repository here"`) {
		t.Fatalf("failing hook logged as %q, want status 3 and its first stderr line", line)
	}
	line := srv.awaitLog(t, `msg="hook killed after its timeout"`)
	if !strings.Contains(line, "stderr=waiting") {
		t.Fatalf("slow hook logged as %q, want its first stderr line", line)
	}
	if took := time.Since(start); took > 500*time.Millisecond+hookStderrTimeout+2*time.Second {
		t.Errorf("the slow hook was killed after %v, its timeout is 0.5 s", took)
	}
	child, err := strconv.Atoi(strings.TrimSpace(string(readFile(t, filepath.Join(dir, "child")))))
	if err != nil {
		t.Fatal(err)
	}
	// The child is gone, or a zombie no one reaped: killed either way. The
	// SIGKILL went out before the log line, but a busy machine may run the
	// child a moment longer before it dies: its death is waited for, 2 s at
	// most.
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(child) + "/stat")
		if errors.Is(err, os.ErrNotExist) || err == nil && strings.Contains(string(stat), ") Z ") {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			syscall.Kill(child, syscall.SIGKILL)
			t.Fatalf("the slow hook's child %d outlived it: %s", child, stat)
		}
	}
	expectSamples(t, scrapeMetrics(t, metrics), map[string]float64{
		`tftpd_hook_runs_total{result="ok"}`:      0,
		`tftpd_hook_runs_total{result="failed"}`:  1,
		`tftpd_hook_runs_total{result="timeout"}`: 1,
		`tftpd_hook_runs_total{result="dropped"}`: 0,
	})
}

// blockingHook waits until the file "go" appears in the folder its first
// argument names (at most 20 s), then exits.
const blockingHook = `#!/bin/sh
i=0
while [ ! -e "$1/go" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i + 1)); done
`

// TestHookFloodIsBounded: with one worker held up, a flood of transfers
// fills the queue and the rest are dropped, counted and logged once;
// every transfer finishes at its own speed, and the queued runs all run
// once the worker is free.
func TestHookFloodIsBounded(t *testing.T) {
	root, dir := t.TempDir(), t.TempDir()
	data := randomBytes(1000, 120)
	os.WriteFile(filepath.Join(root, "f"), data, 0o644)
	srv := startBinary(t, exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", root,
		"--hook", "/bin/sh "+writeScript(t, blockingHook)+" "+dir, "--hook-max", "1", "--metrics", "127.0.0.1:0"))
	metrics := metricsAddr(t, srv)
	const transfers = hookQueueLen + 30
	for i := range transfers {
		start := time.Now()
		res, err := tftpGet(srv.addr, "f", clientOptions{})
		if err != nil {
			t.Fatal(err)
		}
		assertSame(t, res.data, data)
		if took := time.Since(start); took > time.Second {
			t.Fatalf("transfer %d took %v with the hook queue full", i, took)
		}
	}
	completed, fullLines := 0, 0
	for completed < transfers {
		line := srv.awaitLog(t, "msg=")
		switch {
		case strings.Contains(line, `msg="transfer complete"`):
			completed++
		case strings.Contains(line, `msg="hook queue full, run dropped"`):
			fullLines++
		}
	}
	if fullLines != 1 {
		t.Errorf("%d log lines of a full queue within the flood, want 1", fullLines)
	}
	text := scrapeMetrics(t, metrics)
	// One run is held by the worker and the queue takes hookQueueLen; it
	// may have taken the first event before the worker did.
	dropped := sampleValue(t, text, `tftpd_hook_runs_total{result="dropped"}`)
	if dropped < transfers-hookQueueLen-1 || dropped > transfers-hookQueueLen {
		t.Fatalf("%v hook runs dropped of %d, want %d or %d", dropped, transfers, transfers-hookQueueLen-1, transfers-hookQueueLen)
	}
	os.WriteFile(filepath.Join(dir, "go"), nil, 0o644)
	for range transfers - int(dropped) {
		srv.awaitLog(t, `msg="hook ran"`)
	}
	expectSamples(t, scrapeMetrics(t, metrics), map[string]float64{`tftpd_hook_runs_total{result="ok"}`: transfers - dropped})
}
