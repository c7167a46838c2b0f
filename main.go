// r-tftpd: a TFTP server with RFC 7440 windowsize that can relay requests to
// HTTP servers. This file owns the command line, the listening socket, the
// logger and the signals; everything else starts from here.
package main

import (
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
	"runtime/debug"
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
	listen         netip.Addr
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
	wrqDevnull     bool
	disableProxy   bool
	singlePort     bool
	maxBlksize     int
	maxWindowsize  int
	maxWindowBytes int
	mapFile        string      // --map-file, read again on SIGHUP
	mapRules       *remapRules // its rules at startup; nil without one

	// Uploads (WRQ): see upload.go.
	uploadDir       string
	uploadOverwrite bool
	uploadMode      int // -1: 0644 less the umask
	uploadMaxSize   int64
	uploadHTTP      bool

	// Operators: see metrics.go and hook.go.
	metricsAddr netip.AddrPort // --metrics; not valid for none
	hook        []string       // --hook: the program and its fixed arguments
	hookMax     int
	hookTimeout time.Duration
}

// defaultMaxWindowBytes keeps one window within a receiver's default socket
// buffer (Linux: 208 KiB of buffer, which holds far less payload because each
// datagram is charged its whole allocation). Windows past about 128 KiB were
// seen to overflow it on loopback and collapse.
const defaultMaxWindowBytes = 96 * 1024

const usage = `Usage: r-tftpd [OPTIONS]

  -s, --systemd                use the socket passed by systemd (LISTEN_FDS)
  -p, --port <PORT>            port to listen on [default: 69]
  -l, --listen <IP>            ip address to listen on [default: ::, dual-stack]
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
      --map-file <FILE>        rewrite requested names by tftpd-hpa style rules; SIGHUP rereads it
      --no-rfc2347             disable RFC 2347 (OACK) support; only useful for testing some clients
      --wrq-devnull            accept WRQ but throw it away; only useful for testing some clients
      --upload-dir <DIR>       accept WRQ into DIR (atomic, never through a symlink) [default: off]
      --upload-overwrite       let an upload replace an existing file [default: ERROR 6]
      --upload-mode <OCTAL>    mode of uploaded files [default: 0644 less the umask]
      --upload-max-size <B>    largest upload, e.g. 64M [default: 64M]
      --upload-http            relay a WRQ below a URL link or URL fallback as HTTP PUT
      --disable-proxy          disable proxy support
      --metrics <IP:PORT>      serve Prometheus metrics on http://IP:PORT/metrics [default: off]
      --hook <PROGRAM>         run PROGRAM after each transfer, its facts in TFTP_* variables
      --hook-max <NUM>         hook runs at once; later ones queue [default: 4]
      --hook-timeout <SECONDS> kill a hook run after this long [default: 30]
  -h, --help                   print this help
  -V, --version                print the version
`

// errHelpShown ends the program with status 0 after --help or --version.
var errHelpShown = errors.New("help shown")

// flagText holds the flags that are read as text and checked after parsing.
type flagText struct {
	listen, logFormat, logLevel string
	cacheMaxSize                string
	uploadMode, uploadMaxSize   string
	timeout                     float64
	help, showVersion           bool
	metrics, hook               string
	hookTimeout                 float64
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
	for _, check := range []func(*config, *flagText) error{checkLimits, checkLogging, checkPaths, checkUploads, checkMapFile, checkOperators} {
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
	stringFlag(&text.listen, "::", "l", "listen")
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
	boolFlag(&cfg.noRFC2347, "no-rfc2347")
	boolFlag(&cfg.wrqDevnull, "wrq-devnull")
	boolFlag(&cfg.disableProxy, "disable-proxy")
	boolFlag(&cfg.singlePort, "single-port")
	stringFlag(&cfg.mapFile, "", "map-file")
	stringFlag(&cfg.uploadDir, "", "upload-dir")
	boolFlag(&cfg.uploadOverwrite, "upload-overwrite")
	stringFlag(&text.uploadMode, "", "upload-mode")
	stringFlag(&text.uploadMaxSize, "64M", "upload-max-size")
	boolFlag(&cfg.uploadHTTP, "upload-http")
	stringFlag(&text.metrics, "", "metrics")
	stringFlag(&text.hook, "", "hook")
	intFlag(&cfg.hookMax, 4, "hook-max")
	fs.Float64Var(&text.hookTimeout, "hook-timeout", 30, "")
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
	addr, err := netip.ParseAddr(text.listen)
	if err != nil {
		return fmt.Errorf("--listen %q: not an IP address", text.listen)
	}
	cfg.listen = addr
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

// checkMapFile reads the --map-file's rules.
func checkMapFile(cfg *config, _ *flagText) error {
	if cfg.mapFile == "" {
		return nil
	}
	var err error
	cfg.mapRules, err = loadRemapRules(cfg.mapFile)
	return err
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

func listenUDP(cfg *config) (*net.UDPConn, error) {
	if cfg.systemd {
		return systemdSocket()
	}
	network := "udp"
	if cfg.listen.Is4() {
		network = "udp4"
	}
	return net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(cfg.listen, uint16(cfg.port))))
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
	if limit, ok := defaultMemoryLimit(); ok {
		debug.SetMemoryLimit(limit)
		log.Debug("memory limit", "bytes", limit)
	}
	conn, err := listenUDP(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "r-tftpd: %v\n", err)
		return 1
	}
	srv, err := newServer(cfg, conn, log)
	if err != nil {
		fmt.Fprintf(stderr, "r-tftpd: %v\n", err)
		return 1
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
	log.Info("listening", "addr", conn.LocalAddr().String(), "root", cfg.root, "version", version)
	if err := sdNotify("READY=1"); err != nil {
		log.Warn("sd_notify failed", "err", err)
	}
	if cfg.systemd {
		go reportStatus(srv.metrics.status, statusInterval, stopped, log)
	}
	if err := srv.serve(); err != nil {
		log.Error("serve", "err", err)
		return 1
	}
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
