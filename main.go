// r-tftpd: a TFTP server with RFC 7440 windowsize that can relay requests to
// HTTP servers. This file owns the command line, the listening sockets, the
// logger and the signals; everything else starts from here.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"os/user"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

// shutdownGrace is how long running transfers may go on after SIGTERM.
const shutdownGrace = 10 * time.Second

// config is everything the command line sets.
type config struct {
	systemd        bool
	port           int
	listen         []netip.Addr // one socket each
	interfaces     []string     // --interface: a socket per address and interface, bound to it
	maxConnections int
	maxPerClient   int
	timeout        time.Duration
	retries        int
	fallback       string
	logFormat      string
	logLevel       slog.Level
	cacheDir       string
	cacheMaxSize   int64
	root           string
	noRFC2347      bool
	refuse         []string // --refuse: options never acknowledged, as if not asked
	wrqDevnull     bool
	disableProxy   bool
	forwardClient  bool // --forward-client: tell origins who asks
	singlePort     bool
	portRange      portRange // --port-range; zero: any port
	maxBlksize     int
	maxWindowsize  int
	maxWindowBytes int
	pidFile        string      // --pidfile: written once listening, removed at exit
	user           *user.User  // --user: who the server runs as once listening; nil to stay
	mapFile        string      // --map-file, read again on SIGHUP
	mapRules       *remapRules // its rules at startup; nil without one
	mapSteps       int         // --map-steps: rules one mapping may run
	mapTest        string      // --map-test: map the names of this file, print, exit
	mapTestClient  netip.Addr  // --map-test-client: the client the rules see
	mapTestMAC     string      // --map-test-mac: its MAC address, for \m; "" unknown
	mapTestWrite   bool        // --map-test-write: map them as WRQs

	// Uploads (WRQ): see upload.go.
	uploadDir       string
	uploadOverwrite bool
	uploadMode      int // -1: 0644 less the umask
	uploadMaxSize   int64
	uploadHTTP      bool

	// Who may read and write (--allow, --deny, --upload-allow): access.go.
	access accessRules

	// Operators: see metrics.go and hook.go.
	metricsAddr netip.AddrPort // --metrics; not valid for none
	hook        []string       // --hook: the program and its fixed arguments
	hookMax     int
	hookTimeout time.Duration

	// Rate limits of downloads, bytes per second; 0 for none: see window.go.
	maxRate      int64 // --max-rate: each transfer
	maxTotalRate int64 // --max-total-rate: all transfers together
}

// defaultMaxWindowBytes keeps one window within a receiver's default socket
// buffer (Linux: 208 KiB of buffer, which holds far less payload because each
// datagram is charged its whole allocation). Windows past about 128 KiB were
// seen to overflow it on loopback and collapse.
const defaultMaxWindowBytes = 96 * 1024

const usage = `Usage: r-tftpd [OPTIONS]

  -s, --systemd                use the socket passed by systemd (LISTEN_FDS)
  -p, --port <PORT>            port to listen on [default: 69]
  -l, --listen <IP>            ip address to listen on, repeatable [default: ::, dual-stack]
      --interface <NAME>       take requests only from network interface NAME, repeatable [default: all]
  -r, --root <DIR>             directory to serve [default: the working directory]
  -m, --max-connections <NUM>  maximum number of concurrent transfers [default: 64]
      --max-per-client <NUM>   maximum concurrent transfers per client address [default: 0, no limit]
  -t, --timeout <SECONDS>      retransmission timeout, fractions allowed [default: 3]
      --retries <NUM>          consecutive timeouts before a transfer is given up [default: 5]
  -f, --fallback <URI>         fallback uri
  -L, --log-format <FMT>       log format: default, compact, full, json [default: default]
      --log-level <LEVEL>      debug, info, warn or error [default: info]
  -C, --cache-dir <DIR>        directory used for cache files [default: $TMPDIR or /tmp]
      --cache-max-size <BYTES> largest total of cached downloads, e.g. 64M [default: 64M]
      --max-blksize <BYTES>    largest blksize granted [default: what fits the interface MTU]
      --max-windowsize <NUM>   largest windowsize granted [default: 64]
      --max-window-bytes <N>   largest window in bytes (blksize x windowsize) [default: 98304]
      --single-port            answer every transfer from the listening port (NAT, containers)
      --port-range <LO:HI>     transfers answer from ports LO to HI (firewalls) [default: any]
      --pidfile <FILE>         write the process ID to FILE once listening; removed at exit
  -u, --user <NAME>            once listening, run as user NAME (uid, gid and groups) [default: stay]
      --map-file <FILE>        rewrite requested names by tftpd-hpa style rules; SIGHUP rereads it
      --map-steps <NUM>        rules one name may run through before it fails [default: 4096]
      --map-test <FILE>        print what each line of FILE maps to ("ok NAME" or "error CODE MSG"), exit
      --map-test-client <IP>   the client address --map-test's rules see [default: 127.0.0.1]
      --map-test-mac <MAC>     the client MAC address --map-test's \m rules see [default: unknown]
      --map-test-write         --map-test maps the names as writes (WRQ), not reads
      --refuse <OPTION>        never acknowledge OPTION (blksize, tsize, timeout, windowsize,
                               utimeout, rollover, blksize2), as if the client had not sent it; repeatable
      --no-rfc2347             disable RFC 2347 (OACK) support; only useful for testing some clients
      --reject-all             the same as --no-rfc2347 (tftpd-hpa's name)
      --wrq-devnull            accept WRQ but throw it away; only useful for testing some clients
      --upload-dir <DIR>       accept WRQ into DIR (atomic, never through a symlink) [default: off]
      --upload-overwrite       let an upload replace an existing file [default: ERROR 6]
      --upload-mode <OCTAL>    mode of uploaded files [default: 0644 less the umask]
      --upload-max-size <B>    largest upload, e.g. 64M [default: 64M]
      --upload-http            relay a WRQ below a URL link or URL fallback as HTTP PUT
      --disable-proxy          disable proxy support
      --forward-client         tell origins the client (Forwarded: for=, X-TFTP-Client-MAC)
      --allow <CIDR>           only clients in CIDR may make requests; repeatable, lists too [default: all]
      --deny <CIDR>            clients in CIDR may make no request, even if allowed; repeatable
      --upload-allow <CIDR>    only clients in CIDR may write (uploads, PUT relays); repeatable
                               (the access rules are flags: SIGHUP does not change them)
      --metrics <IP:PORT>      serve Prometheus metrics on http://IP:PORT/metrics [default: off]
      --hook <PROGRAM>         run PROGRAM after each transfer, its facts in TFTP_* variables
      --hook-max <NUM>         hook runs at once; later ones queue [default: 4]
      --hook-timeout <SECONDS> kill a hook run after this long [default: 30]
      --max-rate <RATE>        bytes per second of each download, e.g. 512K [default: no limit]
      --max-total-rate <RATE>  bytes per second of all downloads together [default: no limit];
                               RATE's K, M and G are 1024-based, at least 1K
  -h, --help                   print this help
  -V, --version                print the version
`

// errHelpShown ends the program with status 0 after --help or --version.
var errHelpShown = errors.New("help shown")

// flagText holds the flags that are read as text and checked after parsing.
type flagText struct {
	logFormat, logLevel, portRange string
	user                           string
	listen                         stringList
	mapTestClient, mapTestMAC      string
	cacheMaxSize                   string
	uploadMode, uploadMaxSize      string
	timeout                        float64
	help, showVersion              bool
	refuse                         stringList
	metrics, hook                  string
	hookTimeout                    float64
	allow, deny, uploadAllow       stringList
	maxRate, maxTotalRate          string
}

// stringList is a flag that may be given several times.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	*l = append(*l, v)
	return nil
}

func parseFlags(args []string, stdout io.Writer) (*config, error) {
	cfg := &config{}
	fs, text := defineFlags(cfg)
	if err := fs.Parse(args); err != nil {
		return nil, flagError(err, args)
	}
	switch {
	case text.help:
		fmt.Fprint(stdout, usage)
		if !proxySupport {
			fmt.Fprint(stdout, "\nThis build has no proxy support (built with -tags noproxy): URL links\nand a URL --fallback get ERROR 1.\n")
		}
		return nil, errHelpShown
	case text.showVersion:
		fmt.Fprintf(stdout, "r-tftpd %s\n", version)
		return nil, errHelpShown
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for _, check := range []func(*config, *flagText) error{
		checkLimits, checkListening, checkRefuse, checkLogging, checkPaths, checkUploads, checkMapFile, checkOperators, checkAccess,
		checkRates,
	} {
		if err := check(cfg, text); err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

// defineFlags registers every option, under each of its names, into cfg
// or, for those read as text, into the flagText it returns.
func defineFlags(cfg *config) (*flag.FlagSet, *flagText) {
	fs := flag.NewFlagSet("r-tftpd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	text := &flagText{}
	boolFlag := func(p *bool, names ...string) {
		for _, n := range names {
			fs.BoolVar(p, n, false, "")
		}
	}
	intFlag := func(p *int, def int, names ...string) {
		for _, n := range names {
			fs.IntVar(p, n, def, "")
		}
	}
	stringFlag := func(p *string, def string, names ...string) {
		for _, n := range names {
			fs.StringVar(p, n, def, "")
		}
	}
	boolFlag(&cfg.systemd, "s", "systemd")
	intFlag(&cfg.port, 69, "p", "port")
	fs.Var(&text.listen, "l", "")
	fs.Var(&text.listen, "listen", "")
	fs.Var((*stringList)(&cfg.interfaces), "interface", "")
	stringFlag(&cfg.root, ".", "r", "root")
	intFlag(&cfg.maxConnections, 64, "m", "max-connections")
	intFlag(&cfg.maxPerClient, 0, "max-per-client")
	fs.Float64Var(&text.timeout, "t", 3, "")
	fs.Float64Var(&text.timeout, "timeout", 3, "")
	intFlag(&cfg.retries, 5, "retries")
	stringFlag(&cfg.fallback, "", "f", "fallback")
	stringFlag(&text.logFormat, "default", "L", "log-format")
	stringFlag(&text.logLevel, "info", "log-level")
	stringFlag(&cfg.cacheDir, "", "C", "cache-dir")
	stringFlag(&text.cacheMaxSize, "64M", "cache-max-size")
	intFlag(&cfg.maxBlksize, 0, "max-blksize")
	intFlag(&cfg.maxWindowsize, 64, "max-windowsize")
	intFlag(&cfg.maxWindowBytes, defaultMaxWindowBytes, "max-window-bytes")
	boolFlag(&cfg.noRFC2347, "no-rfc2347", "reject-all")
	fs.Var(&text.refuse, "refuse", "")
	boolFlag(&cfg.wrqDevnull, "wrq-devnull")
	boolFlag(&cfg.disableProxy, "disable-proxy")
	boolFlag(&cfg.singlePort, "single-port")
	stringFlag(&text.portRange, "", "port-range")
	stringFlag(&cfg.mapFile, "", "map-file")
	intFlag(&cfg.mapSteps, defaultMapSteps, "map-steps")
	stringFlag(&cfg.mapTest, "", "map-test")
	stringFlag(&text.mapTestClient, "127.0.0.1", "map-test-client")
	stringFlag(&text.mapTestMAC, "", "map-test-mac")
	boolFlag(&cfg.mapTestWrite, "map-test-write")
	stringFlag(&cfg.pidFile, "", "pidfile")
	stringFlag(&text.user, "", "u", "user")
	stringFlag(&cfg.uploadDir, "", "upload-dir")
	boolFlag(&cfg.uploadOverwrite, "upload-overwrite")
	stringFlag(&text.uploadMode, "", "upload-mode")
	stringFlag(&text.uploadMaxSize, "64M", "upload-max-size")
	boolFlag(&cfg.uploadHTTP, "upload-http")
	boolFlag(&cfg.forwardClient, "forward-client")
	stringFlag(&text.metrics, "", "metrics")
	stringFlag(&text.hook, "", "hook")
	intFlag(&cfg.hookMax, 4, "hook-max")
	fs.Float64Var(&text.hookTimeout, "hook-timeout", 30, "")
	fs.Var(&text.allow, "allow", "")
	fs.Var(&text.deny, "deny", "")
	fs.Var(&text.uploadAllow, "upload-allow", "")
	stringFlag(&text.maxRate, "", "max-rate")
	stringFlag(&text.maxTotalRate, "", "max-total-rate")
	boolFlag(&text.help, "h", "help")
	boolFlag(&text.showVersion, "V", "version")
	return fs, text
}

// checkLimits checks the numbers of the protocol and the limits.
func checkLimits(cfg *config, text *flagText) error {
	switch {
	case cfg.port < 0 || cfg.port > 65535:
		return fmt.Errorf("--port %d: not a port number (0-65535)", cfg.port)
	case math.IsNaN(text.timeout) || text.timeout <= 0 || text.timeout > 255:
		return fmt.Errorf("--timeout %v: must be more than 0 and at most 255 seconds", text.timeout)
	case cfg.maxConnections < 1:
		return fmt.Errorf("--max-connections %d: must be at least 1", cfg.maxConnections)
	case cfg.maxPerClient < 0:
		return fmt.Errorf("--max-per-client %d: must be 0 (no limit) or more", cfg.maxPerClient)
	case cfg.retries < 1:
		return fmt.Errorf("--retries %d: must be at least 1", cfg.retries)
	case cfg.maxBlksize != 0 && (cfg.maxBlksize < minBlksize || cfg.maxBlksize > maxBlksize):
		return fmt.Errorf("--max-blksize %d: must be from %d to %d", cfg.maxBlksize, minBlksize, maxBlksize)
	case cfg.maxWindowsize < 1 || cfg.maxWindowsize > maxWindowsize:
		return fmt.Errorf("--max-windowsize %d: must be from 1 to %d", cfg.maxWindowsize, maxWindowsize)
	case cfg.maxWindowBytes < 1:
		return fmt.Errorf("--max-window-bytes %d: must be at least 1", cfg.maxWindowBytes)
	}
	cfg.timeout = time.Duration(text.timeout * float64(time.Second))
	return nil
}

// checkListening reads where the server listens, the ports its transfers
// take and the user it becomes.
func checkListening(cfg *config, text *flagText) error {
	if len(text.listen) == 0 {
		text.listen = stringList{"::"}
	}
	for _, a := range text.listen {
		addr, err := netip.ParseAddr(a)
		if err != nil {
			return fmt.Errorf("--listen %q: not an IP address", a)
		}
		cfg.listen = append(cfg.listen, addr)
	}
	for _, name := range cfg.interfaces {
		if _, err := net.InterfaceByName(name); err != nil {
			return fmt.Errorf("--interface %q: no such network interface", name)
		}
	}
	if len(cfg.interfaces) > 0 && cfg.systemd {
		return errors.New("--interface and --systemd exclude each other: the socket unit's BindToDevice= does it")
	}
	if text.portRange != "" {
		lo, hi, _ := strings.Cut(text.portRange, ":")
		l, errLo := strconv.ParseUint(lo, 10, 16)
		h, errHi := strconv.ParseUint(hi, 10, 16)
		switch {
		case errLo != nil || errHi != nil || l < 1 || l > h:
			return fmt.Errorf("--port-range %q: must be LO:HI, ports with 1 <= LO <= HI <= 65535", text.portRange)
		case cfg.singlePort:
			return errors.New("--port-range and --single-port exclude each other")
		}
		cfg.portRange = portRange{uint16(l), uint16(h)}
	}
	if text.user != "" {
		return checkUser(cfg, text.user)
	}
	return nil
}

// checkRefuse reads the options --refuse names.
func checkRefuse(cfg *config, text *flagText) error {
	for _, name := range text.refuse {
		if !slices.Contains(refusableOptions, strings.ToLower(name)) {
			return fmt.Errorf("--refuse %q: not an option (%s)", name, strings.Join(refusableOptions, ", "))
		}
		cfg.refuse = append(cfg.refuse, strings.ToLower(name))
	}
	return nil
}

// checkLogging reads the log format and level.
func checkLogging(cfg *config, text *flagText) error {
	switch text.logFormat {
	case "default", "compact", "full", "json":
		cfg.logFormat = text.logFormat
	default:
		return fmt.Errorf("--log-format %q: must be default, compact, full or json", text.logFormat)
	}
	if cfg.logFormat == "default" {
		cfg.logFormat = "full"
		if cfg.systemd {
			cfg.logFormat = "compact"
		}
	}
	if err := cfg.logLevel.UnmarshalText([]byte(text.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: must be debug, info, warn or error", text.logLevel)
	}
	return nil
}

// checkPaths checks the served root, the cache and the fallback.
func checkPaths(cfg *config, text *flagText) error {
	if fi, err := os.Stat(cfg.root); err != nil || !fi.IsDir() {
		return fmt.Errorf("--root %q: not a directory", cfg.root)
	}
	if cfg.cacheDir == "" {
		cfg.cacheDir = os.TempDir()
	} else if fi, err := os.Stat(cfg.cacheDir); err != nil || !fi.IsDir() {
		return fmt.Errorf("--cache-dir %q: not a directory", cfg.cacheDir)
	}
	var err error
	if cfg.cacheMaxSize, err = parseByteSize(text.cacheMaxSize); err != nil {
		return fmt.Errorf("--cache-max-size: %v", err)
	}
	if isURLTarget(cfg.fallback) {
		if _, err := parseProxyURL(cfg.fallback, func(string) {}); err != nil {
			return fmt.Errorf("--fallback %q: %v", cfg.fallback, err)
		}
	} else if cfg.fallback != "" {
		if fi, err := os.Stat(cfg.fallback); err != nil || !fi.IsDir() {
			return fmt.Errorf("--fallback %q: neither an http(s) URL nor a directory", cfg.fallback)
		}
	}
	return nil
}

// checkMapFile reads the --map-file's rules and checks the --map-test
// flags.
func checkMapFile(cfg *config, text *flagText) error {
	var err error
	switch {
	case cfg.mapSteps < 1 || cfg.mapSteps > maxMapSteps:
		return fmt.Errorf("--map-steps %d: must be from 1 to %d", cfg.mapSteps, maxMapSteps)
	case cfg.mapTest != "" && cfg.mapFile == "":
		return fmt.Errorf("--map-test %q: needs the --map-file to test", cfg.mapTest)
	}
	if cfg.mapTestClient, err = netip.ParseAddr(text.mapTestClient); err != nil {
		return fmt.Errorf("--map-test-client %q: not an IP address", text.mapTestClient)
	}
	if text.mapTestMAC != "" {
		mac, err := net.ParseMAC(text.mapTestMAC)
		if err != nil || len(mac) != 6 {
			return fmt.Errorf("--map-test-mac %q: not a MAC address (such as 02:00:5e:10:00:01)", text.mapTestMAC)
		}
		cfg.mapTestMAC = mac.String()
	}
	if cfg.mapFile == "" {
		return nil
	}
	cfg.mapRules, err = loadRemapRules(cfg.mapFile)
	return err
}

// checkUser finds --user's account, by name or number.
func checkUser(cfg *config, name string) error {
	u, err := user.Lookup(name)
	if err != nil {
		if u, err = user.LookupId(name); err != nil {
			return fmt.Errorf("--user %q: no such user", name)
		}
	}
	if cfg.portRange.lo != 0 && cfg.portRange.lo < 1024 {
		return fmt.Errorf("--port-range %d:%d with --user: ports below 1024 need root, which the transfers no longer have",
			cfg.portRange.lo, cfg.portRange.hi)
	}
	cfg.user = u
	return nil
}

// dropPrivileges makes the process u's: its groups, its gid, then its uid,
// on every thread (Go's Setgroups, Setgid and Setuid apply to all of them
// on Linux). A process that already is u and nothing more has nothing to
// drop; any other failure ends the startup, rather than run on as root.
func dropPrivileges(u *user.User) error {
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return fmt.Errorf("--user %s: uid %q: %v", u.Username, u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return fmt.Errorf("--user %s: gid %q: %v", u.Username, u.Gid, err)
	}
	names, err := u.GroupIds()
	if err != nil {
		return fmt.Errorf("--user %s: groups: %v", u.Username, err)
	}
	groups := []int{gid}
	for _, g := range names {
		if n, err := strconv.Atoi(g); err == nil && n != gid {
			groups = append(groups, n)
		}
	}
	if current, _ := syscall.Getgroups(); os.Getuid() == uid && os.Geteuid() == uid && os.Getgid() == gid &&
		os.Getegid() == gid && slices.Equal(current, groups) {
		return nil
	}
	for _, step := range []struct {
		what string
		do   func() error
	}{
		{"setgroups", func() error { return syscall.Setgroups(groups) }},
		{"setgid", func() error { return syscall.Setgid(gid) }},
		{"setuid", func() error { return syscall.Setuid(uid) }},
	} {
		if err := step.do(); err != nil {
			return fmt.Errorf("--user %s: %s: %v", u.Username, step.what, err)
		}
	}
	if os.Geteuid() != uid || os.Getegid() != gid {
		return fmt.Errorf("--user %s: still uid %d, gid %d", u.Username, os.Geteuid(), os.Getegid())
	}
	return nil
}

func newLogger(cfg *config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.logLevel}
	switch cfg.logFormat {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts))
	case "compact":
		// journald stamps each line itself.
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// listenUDP opens a socket for each --listen address (and --interface),
// or takes systemd's.
func listenUDP(cfg *config) ([]*net.UDPConn, error) {
	if cfg.systemd {
		return systemdSockets()
	}
	devices := cfg.interfaces
	if len(devices) == 0 {
		devices = []string{""} // every interface
	}
	return openAllSockets(len(cfg.listen)*len(devices), func(i int) (*net.UDPConn, error) {
		return listenOn(cfg.listen[i/len(devices)], uint16(cfg.port), devices[i%len(devices)])
	})
}

// listenOn binds a socket to addr and port, and to network interface device
// unless it is "" (SO_BINDTODEVICE: datagrams from any other interface
// never reach it).
func listenOn(addr netip.Addr, port uint16, device string) (*net.UDPConn, error) {
	at := netip.AddrPortFrom(addr, port)
	if device == "" {
		network := "udp"
		if addr.Is4() {
			network = "udp4"
		}
		return net.ListenUDP(network, net.UDPAddrFromAddrPort(at))
	}
	// The device must be set before bind, so that sockets on the same
	// address and port but other devices do not conflict. By hand, as
	// net.ListenConfig would bring in the name resolver (100 KiB).
	var sa unix.Sockaddr
	family := unix.AF_INET
	if addr.Is4() {
		sa = &unix.SockaddrInet4{Port: int(port), Addr: addr.As4()}
	} else {
		family = unix.AF_INET6
		sa6 := &unix.SockaddrInet6{Port: int(port), Addr: addr.As16()}
		if addr.Zone() != "" {
			ifi, err := net.InterfaceByName(addr.Zone())
			if err != nil {
				return nil, fmt.Errorf("listen %v: %w", at, err)
			}
			sa6.ZoneId = uint32(ifi.Index)
		}
		sa = sa6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("listen %v: %w", at, err)
	}
	f := os.NewFile(uintptr(fd), "listen")
	defer f.Close()
	if addr == netip.IPv6Unspecified() {
		// Dual-stack, as net.ListenUDP makes "::", whatever bindv6only says.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			return nil, fmt.Errorf("listen %v: %w", at, err)
		}
	}
	if err := unix.BindToDevice(fd, device); err != nil {
		return nil, fmt.Errorf("--interface %s: %w", device, err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		return nil, fmt.Errorf("listen %v on %s: bind: %w", at, device, err)
	}
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("listen %v: %w", at, err)
	}
	return pc.(*net.UDPConn), nil
}

// defaultMemoryLimit is the garbage collector's soft ceiling when GOMEMLIMIT
// is not set: a quarter of the RAM, between 16 MiB and 256 MiB. On a router a
// burst of transfers then makes the collector work harder instead of growing
// the heap toward what the rest of the system needs.
func defaultMemoryLimit() (int64, bool) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return 0, false
	}
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0, false
	}
	return memoryLimitFor(uint64(si.Totalram) * uint64(max(si.Unit, 1))), true
}

// memoryLimitFor is the default soft memory limit for ram bytes of RAM.
func memoryLimitFor(ram uint64) int64 {
	return int64(min(max(ram/4, 16<<20), 256<<20))
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stdout)
	if errors.Is(err, errHelpShown) {
		return 0
	}
	var badRules *remapFileError
	if errors.As(err, &badRules) {
		fmt.Fprintf(stderr, "r-tftpd: %v\n", err)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "r-tftpd: %v (see --help)\n", err)
		return 2
	}
	log := newLogger(cfg, stderr)
	if !proxySupport && isURLTarget(cfg.fallback) {
		log.Warn("--fallback is a URL but this build has no proxy support: missing files get ERROR 1")
	}
	if r := cfg.portRange; r.lo != 0 && int(r.hi-r.lo)+1 < cfg.maxConnections {
		log.Warn("--port-range has fewer ports than --max-connections: past them, requests get ERROR 0 server busy",
			"ports", int(r.hi-r.lo)+1, "max_connections", cfg.maxConnections)
	}
	if limit, ok := defaultMemoryLimit(); ok {
		debug.SetMemoryLimit(limit)
		log.Debug("memory limit", "bytes", limit)
	}
	if cfg.mapTest != "" {
		return runMapTest(cfg, log, stdout, stderr)
	}
	conns, err := listenUDP(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "r-tftpd: %v\n", err)
		return 1
	}
	srv, err := newServer(cfg, conns, log)
	if err != nil {
		fmt.Fprintf(stderr, "r-tftpd: %v\n", err)
		return 1
	}
	// Bound before --user takes the rights a low port needs.
	if cfg.metricsAddr.IsValid() {
		ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(cfg.metricsAddr))
		if err != nil {
			fmt.Fprintf(stderr, "r-tftpd: --metrics: %v\n", err)
			return 1
		}
		defer ln.Close()
		go serveMetrics(ln, srv.metrics, log)
		log.Info("metrics listening", "addr", ln.Addr().String())
	}

	if cfg.pidFile != "" {
		if err := os.WriteFile(cfg.pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			fmt.Fprintf(stderr, "r-tftpd: --pidfile: %v\n", err)
			return 1
		}
		defer func() {
			if err := os.Remove(cfg.pidFile); err != nil {
				log.Warn("cannot remove the --pidfile", "err", err)
			}
		}()
	}

	if cfg.user != nil {
		if err := dropPrivileges(cfg.user); err != nil {
			fmt.Fprintf(stderr, "r-tftpd: %v\n", err)
			return 1
		}
	}

	stopped := make(chan struct{})
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGHUP)
	go func() {
		sig := <-signals
		for ; sig == syscall.SIGUSR1 || sig == syscall.SIGUSR2 || sig == syscall.SIGHUP; sig = <-signals {
			switch sig {
			case syscall.SIGUSR1:
				srv.logTransfers()
				srv.cache.dump()
			case syscall.SIGUSR2:
				srv.cache.clear()
				log.Info("cache emptied", "signal", sig.String())
			case syscall.SIGHUP:
				if err := srv.rules.reload(); errors.Is(err, errNoRulesFile) {
					log.Info("nothing to reload", "signal", sig.String(), "err", err)
				} else {
					srv.metrics.mapReload(err)
				}
			}
		}
		log.Info("shutting down", "signal", sig.String())
		if err := sdNotify("STOPPING=1"); err != nil {
			log.Warn("sd_notify failed", "err", err)
		}
		srv.shutdown(shutdownGrace)
		close(stopped)
	}()

	for _, conn := range conns {
		log.Info("listening", "addr", conn.LocalAddr().String(), "root", cfg.root, "version", version)
	}
	if err := sdNotify("READY=1"); err != nil {
		log.Warn("sd_notify failed", "err", err)
	}
	if cfg.systemd {
		go reportStatus(srv.metrics.status, statusInterval, stopped, log)
	}
	srv.serve()
	<-stopped
	return 0
}

// flagError names an option as the user typed it ("--bogus", "-p"); the
// flag package would say "-bogus" whatever was typed.
func flagError(err error, args []string) error {
	msg := err.Error()
	typed := func(name string) string {
		for _, a := range args {
			if a == "--" {
				break
			}
			if opt, _, _ := strings.Cut(a, "="); strings.TrimLeft(opt, "-") == name && strings.HasPrefix(opt, "-") {
				return opt
			}
		}
		return "--" + name
	}
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return fmt.Errorf("unknown option %s", typed(name))
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return fmt.Errorf("option %s needs a value", typed(name))
	}
	if rest, ok := strings.CutPrefix(msg, "invalid value "); ok {
		if value, name, ok := strings.Cut(rest, " for flag -"); ok {
			name, _, _ = strings.Cut(name, ":")
			return fmt.Errorf("option %s: invalid value %s", typed(name), value)
		}
	}
	return err
}

// checkUploads checks the upload flags.
func checkUploads(cfg *config, text *flagText) error {
	var err error
	if cfg.uploadMaxSize, err = parseByteSize(text.uploadMaxSize); err != nil {
		return fmt.Errorf("--upload-max-size: %v", err)
	}
	cfg.uploadMode = -1
	if text.uploadMode != "" {
		m, err := strconv.ParseUint(text.uploadMode, 8, 32)
		if err != nil || m > 0o777 {
			return fmt.Errorf("--upload-mode %q: not a file mode (octal, such as 0640)", text.uploadMode)
		}
		cfg.uploadMode = int(m)
	}
	if cfg.uploadDir != "" {
		if fi, err := os.Stat(cfg.uploadDir); err != nil || !fi.IsDir() {
			return fmt.Errorf("--upload-dir %q: not a directory", cfg.uploadDir)
		}
		if cfg.wrqDevnull {
			return errors.New("--upload-dir and --wrq-devnull exclude each other")
		}
	}
	return nil
}

// minRate is the lowest rate limit taken: below it one block of 512 bytes
// alone would take longer than half a second.
const minRate = 1024

// checkRates reads --max-rate and --max-total-rate: sizes with K, M or G,
// 1024-based, at least minRate.
func checkRates(cfg *config, text *flagText) error {
	for _, r := range []struct {
		name, text string
		rate       *int64
	}{{"--max-rate", text.maxRate, &cfg.maxRate}, {"--max-total-rate", text.maxTotalRate, &cfg.maxTotalRate}} {
		if r.text == "" {
			continue
		}
		n, err := parseByteSize(r.text)
		if err != nil || n < minRate {
			return fmt.Errorf("%s %q: must be a rate in bytes per second of at least 1K (K, M, G are 1024-based)", r.name, r.text)
		}
		*r.rate = n
	}
	return nil
}

// parseByteSize reads a size such as 67108864, 64M, 64MiB or 1G.
func parseByteSize(s string) (int64, error) {
	units := []struct {
		suffix string
		shift  uint
	}{{"kib", 10}, {"mib", 20}, {"gib", 30}, {"k", 10}, {"m", 20}, {"g", 30}, {"b", 0}}
	lower := strings.ToLower(strings.TrimSpace(s))
	shift := uint(0)
	for _, u := range units {
		if rest, ok := strings.CutSuffix(lower, u.suffix); ok {
			lower, shift = rest, u.shift
			break
		}
	}
	n, err := strconv.ParseInt(lower, 10, 64)
	if err != nil || n < 0 || n > (1<<62)>>shift {
		return 0, fmt.Errorf("%q is not a size in bytes (such as 64M)", s)
	}
	return n << shift, nil
}

// runMapTest is --map-test: each line of the file is a name a client
// requests (a last line without a newline too), mapped as the server would
// map it, "E" rules seeing the files it serves; stdout gets one line for
// each, "ok\tNAME" or "error\tCODE\tMESSAGE" with the ERROR that client
// would get.
func runMapTest(cfg *config, log *slog.Logger, stdout, stderr io.Writer) int {
	text, err := os.ReadFile(cfg.mapTest)
	if err != nil {
		fmt.Fprintf(stderr, "r-tftpd: --map-test: %v\n", err)
		return 1
	}
	op := uint16(opRRQ)
	if cfg.mapTestWrite {
		op = opWRQ
	}
	res := newResolver(cfg, log)
	servable := func(name string) bool { return nameServable(cfg, res, op, name) }
	rules := newRemapTable(cfg.mapFile, cfg.mapSteps, cfg.mapRules, log)
	mac := func() string { return cfg.mapTestMAC }
	out := bufio.NewWriter(stdout)
	for _, name := range strings.SplitAfter(string(text), "\n") {
		if name == "" {
			continue // after the last newline
		}
		mapped, err := rules.mapRequest(strings.TrimSuffix(name, "\n"), op, cfg.mapTestClient, mac, servable, log)
		if err == nil {
			_, err = cleanRequestPath(mapped)
		}
		if err != nil {
			we := toWireError(err)
			fmt.Fprintf(out, "error\t%d\t%s\n", we.code, we.msg)
		} else {
			fmt.Fprintf(out, "ok\t%s\n", mapped)
		}
	}
	if err := out.Flush(); err != nil {
		fmt.Fprintf(stderr, "r-tftpd: --map-test: %v\n", err)
		return 1
	}
	return 0
}

// checkOperators checks --metrics and the --hook options.
func checkOperators(cfg *config, text *flagText) error {
	if text.metrics != "" {
		// An IP address, not a host name: resolving one would link Go's
		// DNS resolver: 237 KB raw, 56 KB xz in the noproxy build on mipsle.
		addr, err := netip.ParseAddrPort(text.metrics)
		if err != nil {
			return fmt.Errorf("--metrics %q: not an IP address and port (such as 127.0.0.1:9169 or [::]:9169)", text.metrics)
		}
		cfg.metricsAddr = addr
	}
	switch {
	case cfg.hookMax < 1 || cfg.hookMax > maxHookWorkers:
		return fmt.Errorf("--hook-max %d: must be 1 to %d", cfg.hookMax, maxHookWorkers)
	case math.IsNaN(text.hookTimeout) || text.hookTimeout <= 0 || text.hookTimeout > 86400:
		return fmt.Errorf("--hook-timeout %v: must be more than 0 and at most 86400 seconds", text.hookTimeout)
	}
	cfg.hookTimeout = time.Duration(text.hookTimeout * float64(time.Second))
	if text.hook != "" {
		argv, err := hookCommand(text.hook)
		if err != nil {
			return fmt.Errorf("--hook: %v", err)
		}
		cfg.hook = argv
	}
	return nil
}

// checkAccess reads --allow, --deny and --upload-allow.
func checkAccess(cfg *config, text *flagText) error {
	for _, f := range []struct {
		name   string
		values stringList
		list   *prefixList
	}{{"allow", text.allow, &cfg.access.allow}, {"deny", text.deny, &cfg.access.deny}, {"upload-allow", text.uploadAllow, &cfg.access.uploadAllow}} {
		for _, v := range f.values {
			l, err := parsePrefixList(v)
			if err != nil {
				return fmt.Errorf("--%s: %v", f.name, err)
			}
			*f.list = append(*f.list, l...)
		}
	}
	return nil
}
