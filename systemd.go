// systemd socket activation and readiness notification, by hand: LISTEN_FDS
// and LISTEN_PID name the inherited sockets (they start at fd 3), and
// NOTIFY_SOCKET is a datagram socket that takes "READY=1", "STOPPING=1" and
// the live "STATUS=" line.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"
)

// listenFDsStart is the first inherited descriptor (SD_LISTEN_FDS_START).
const listenFDsStart = 3

// systemdSockets returns the datagram sockets systemd passed.
func systemdSockets() ([]*net.UDPConn, error) {
	pid, fds := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	// The variables are for this process only, never for its children.
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	if fds == "" {
		return nil, errors.New("--systemd: no socket passed (LISTEN_FDS is not set)")
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 1 {
		return nil, fmt.Errorf("--systemd: LISTEN_FDS=%q passes no socket", fds)
	}
	if pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return nil, fmt.Errorf("--systemd: LISTEN_PID=%s is not this process", pid)
	}
	return openAllSockets(n, func(i int) (*net.UDPConn, error) { return systemdSocket(listenFDsStart + i) })
}

// systemdSocket takes inherited descriptor fd as a UDP socket.
func systemdSocket(fd int) (*net.UDPConn, error) {
	f := os.NewFile(uintptr(fd), "systemd-socket")
	pc, err := net.FilePacketConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("--systemd: fd %d: %w", fd, err)
	}
	conn, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("--systemd: fd %d is not a UDP socket", fd)
	}
	return conn, nil
}

// sdNotify sends a state change to the service manager, when there is one.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}

// statusInterval is how often STATUS= may change.
const statusInterval = time.Second

// reportStatus tells the service manager what status says, each time it
// changes, at most once per interval, until stop is closed.
func reportStatus(status func() string, interval time.Duration, stop <-chan struct{}, log *slog.Logger) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	last := ""
	for {
		if now := status(); now != last {
			if err := sdNotify("STATUS=" + now); err != nil {
				log.Debug("sd_notify STATUS failed", "err", err)
			}
			last = now
		}
		select {
		case <-tick.C:
		case <-stop:
			return
		}
	}
}
