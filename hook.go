// The --hook runner: after every transfer that ran, the admin's program is
// executed with the transfer's facts in its environment. Its own file
// because it is the only place the server starts processes, and it must
// neither delay a transfer nor the listener: a session only queues its
// facts (never blocking), a few workers run the program, each run killed
// after --hook-timeout, and what the bounded queue cannot take is dropped,
// counted and logged at most once per interval.
//
// What a client chose (its file name above all) reaches the program only as
// the value of an environment variable: the program is executed directly,
// never through a shell, with the admin's own arguments only, so no name
// can become an option or a command.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// hookEvent is one finished transfer as the hook is told of it.
type hookEvent struct {
	op          string // read or write
	file        string // the name as requested
	name        string // the name after --map-file
	path        string // the file read or stored, or the URL
	client      netip.AddrPort
	mac         string
	bytes       int64
	took        time.Duration
	outcome     string // complete, failed or aborted
	err         string
	sha256      string // of a stored upload
	retransmits int
}

// environ is the hook's environment: the server's own, less what belongs to
// this process alone (systemd's variables) and any TFTP_ variable, plus the
// event's facts. A fact that is not known is left out.
func (ev *hookEvent) environ(base []string) []string {
	env := make([]string, 0, len(base)+13)
	for _, kv := range base {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "TFTP_") || strings.HasPrefix(name, "LISTEN_") || name == "NOTIFY_SOCKET" {
			continue
		}
		env = append(env, kv)
	}
	add := func(name, value string) {
		if value != "" {
			env = append(env, name+"="+value)
		}
	}
	add("TFTP_OP", ev.op)
	add("TFTP_FILE", ev.file)
	add("TFTP_NAME", ev.name)
	add("TFTP_PATH", ev.path)
	add("TFTP_CLIENT", ev.client.Addr().String())
	add("TFTP_CLIENT_PORT", strconv.Itoa(int(ev.client.Port())))
	add("TFTP_CLIENT_MAC", ev.mac)
	add("TFTP_BYTES", strconv.FormatInt(ev.bytes, 10))
	add("TFTP_SECONDS", strconv.FormatFloat(ev.took.Seconds(), 'f', 3, 64))
	add("TFTP_OUTCOME", ev.outcome)
	add("TFTP_ERROR", ev.err)
	add("TFTP_SHA256", ev.sha256)
	add("TFTP_RETRANSMITS", strconv.Itoa(ev.retransmits))
	return env
}

// Limits of the queue: events wait in it while every worker is busy. Its
// size in bytes is bounded too, because a requested name can be 64 KB long.
// maxHookWorkers bounds --hook-max: each worker is a goroutine from the start.
const (
	maxHookWorkers    = 256
	hookQueueLen      = 64
	hookQueueBytes    = 1 << 20
	hookDropInterval  = 10 * time.Second
	hookStderrLine    = maxLoggedText
	hookStderrTimeout = time.Second // for the pipe, once the program exited
)

// hookRunner runs the --hook program for each event it is given.
type hookRunner struct {
	argv    []string // the program and the admin's arguments
	timeout time.Duration
	log     *slog.Logger
	metrics *metrics

	queue   chan hookEvent
	workers sync.WaitGroup
	kill    chan struct{} // closed at shutdown: running programs are killed

	mu             sync.Mutex
	queuedBytes    int
	closed         bool
	leftAtShutdown int
	// Drops are logged once per interval: the first at once, the count of
	// the rest when the interval ends.
	dropping bool
	dropped  int
}

func newHookRunner(argv []string, workers int, timeout time.Duration, log *slog.Logger, m *metrics) *hookRunner {
	h := &hookRunner{argv: argv, timeout: timeout, log: log, metrics: m,
		queue: make(chan hookEvent, hookQueueLen), kill: make(chan struct{})}
	h.workers.Add(workers)
	for range workers {
		go func() {
			defer h.workers.Done()
			for ev := range h.queue {
				h.release(ev)
				select {
				case <-h.kill: // shutting down, out of time
					h.mu.Lock()
					h.leftAtShutdown++
					h.mu.Unlock()
				default:
					h.run(ev)
				}
			}
		}()
	}
	return h
}

func eventBytes(ev hookEvent) int { return len(ev.file) + len(ev.name) + len(ev.path) + len(ev.err) }

// submit queues ev for a worker and returns at once; a full queue drops it.
func (h *hookRunner) submit(ev hookEvent) {
	if h == nil {
		return
	}
	h.mu.Lock()
	ok := !h.closed && h.queuedBytes+eventBytes(ev) <= hookQueueBytes
	if ok {
		select {
		case h.queue <- ev:
			h.queuedBytes += eventBytes(ev)
		default:
			ok = false
		}
	}
	h.mu.Unlock()
	if !ok {
		h.drop(ev)
	}
}

func (h *hookRunner) release(ev hookEvent) {
	h.mu.Lock()
	h.queuedBytes -= eventBytes(ev)
	h.mu.Unlock()
}

// drop counts an event the queue could not take, and logs it unless a
// drop was logged less than an interval ago.
func (h *hookRunner) drop(ev hookEvent) {
	h.metrics.hookRun(hookDropped)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.dropping {
		h.dropped++
		return
	}
	h.dropping = true
	h.log.Warn("hook queue full, run dropped", "client", ev.client.String(), "file", logText(ev.file),
		"queue", hookQueueLen)
	time.AfterFunc(hookDropInterval, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.dropped > 0 {
			h.log.Warn("hook runs dropped, the queue was full", "count", h.dropped, "interval", hookDropInterval)
		}
		h.dropping, h.dropped = false, 0
	})
}

// run executes the program once for ev and logs how it ended.
func (h *hookRunner) run(ev hookEvent) {
	start := time.Now()
	attrs := []any{"client", ev.client.String(), "file", logText(ev.file)}
	ws, line, timedOut, err := h.execute(ev.environ(os.Environ()))
	if err != nil {
		h.metrics.hookRun(hookFailed)
		h.log.Warn("hook could not run", append(attrs, "err", err)...)
		return
	}
	attrs = append(attrs, "duration", time.Since(start).Round(time.Millisecond))
	if line != "" {
		attrs = append(attrs, "stderr", line)
	}
	switch {
	case timedOut:
		h.metrics.hookRun(hookTimedOut)
		h.log.Warn("hook killed after its timeout", append(attrs, "timeout", h.timeout)...)
	case ws.Exited() && ws.ExitStatus() == 0:
		h.metrics.hookRun(hookOK)
		h.log.Info("hook ran", append(attrs, "status", 0)...)
	default:
		h.metrics.hookRun(hookFailed)
		h.log.Warn("hook failed", append(attrs, "status", exitStatus(ws))...)
	}
}

// execute runs the program with env, stdin and stdout on /dev/null and
// stderr on a pipe, and returns how it ended, the first line of its
// stderr, and whether it was killed for its timeout. The program leads a
// process group of its own, and a kill (the timeout, or shutdown) takes the
// whole group, so what it started goes too; the program is reaped only
// once no kill can come, so its group's number cannot be another's by then.
// syscall's ForkExec and Wait4, not os.StartProcess: os.Process and its
// pidfd handling cost 8 KB more on mipsle.
func (h *hookRunner) execute(env []string) (ws syscall.WaitStatus, firstLine string, timedOut bool, err error) {
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return ws, "", false, err
	}
	defer devnull.Close()
	stderrR, stderrW, err := os.Pipe()
	if err != nil {
		return ws, "", false, err
	}
	defer stderrR.Close()
	pid, err := syscall.ForkExec(h.argv[0], h.argv, &syscall.ProcAttr{
		Env:   env,
		Files: []uintptr{devnull.Fd(), devnull.Fd(), stderrW.Fd()},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	})
	stderrW.Close()
	if err != nil {
		return ws, "", false, err
	}
	lineRead := make(chan string, 1)
	go func() { lineRead <- readFirstLine(stderrR, hookStderrLine) }()
	exited, killerDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(killerDone)
		timer := time.NewTimer(h.timeout)
		defer timer.Stop()
		select {
		case <-exited:
			return
		case <-timer.C:
			timedOut = true
		case <-h.kill:
		}
		syscall.Kill(-pid, syscall.SIGKILL)
	}()
	var info unix.Siginfo
	for err = unix.EINTR; err == unix.EINTR; {
		err = unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
	}
	close(exited)
	<-killerDone
	for err = syscall.EINTR; err == syscall.EINTR; {
		_, err = syscall.Wait4(pid, &ws, 0, nil)
	}
	// A child the program left behind may hold the pipe open: its first
	// line is waited for only briefly once the program exited.
	stderrR.SetReadDeadline(time.Now().Add(hookStderrTimeout))
	return ws, <-lineRead, timedOut, err
}

// exitStatus is a finished program's exit code, or the signal that ended it.
func exitStatus(ws syscall.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return strconv.Itoa(ws.ExitStatus())
}

// readFirstLine returns the first line f gives, at most limit bytes of it,
// as a log may hold it, and reads the rest to its end so the writer never
// blocks on a full pipe. One buffer and f's own Read: bufio and io.Copy
// would link the file copy paths (sendfile, splice, copy_file_range).
func readFirstLine(f *os.File, limit int) string {
	var line []byte
	buf := make([]byte, 512)
	whole := false // the line ended, or reached limit
	for {
		n, err := f.Read(buf)
		if chunk := buf[:n]; !whole {
			if i := bytes.IndexByte(chunk, '\n'); i >= 0 {
				chunk, whole = chunk[:i], true
			}
			line = append(line, chunk[:min(len(chunk), limit-len(line))]...)
			whole = whole || len(line) == limit
		}
		if err != nil {
			return logText(strings.TrimRight(string(line), "\r"))
		}
	}
}

// close stops taking events and waits until deadline for the runs queued
// and running; then the running ones are killed and the rest dropped.
func (h *hookRunner) close(deadline time.Time) {
	if h == nil {
		return
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	close(h.queue)
	h.mu.Unlock()
	done := make(chan struct{})
	go func() { h.workers.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(time.Until(deadline)):
	}
	close(h.kill)
	<-done
	if h.leftAtShutdown > 0 {
		h.log.Warn("hook runs dropped at shutdown", "count", h.leftAtShutdown)
	}
}

// hookCommand reads --hook: the program, then the admin's own arguments,
// split at spaces. A program named without a slash is looked up in PATH;
// it must be an executable file.
func hookCommand(spec string) ([]string, error) {
	argv := strings.Fields(spec)
	if len(argv) == 0 {
		return nil, errors.New("names no program")
	}
	prog := argv[0]
	if !strings.Contains(prog, "/") {
		for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
			if dir == "" {
				dir = "."
			}
			if p := filepath.Join(dir, prog); isExecutable(p) {
				argv[0] = p
				return argv, nil
			}
		}
		return nil, fmt.Errorf("%s: not found in PATH", prog)
	}
	if !isExecutable(prog) {
		return nil, fmt.Errorf("%s: not an executable file", prog)
	}
	return argv, nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
