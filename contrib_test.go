// The files in contrib/ work as shipped: the systemd socket unit starts the
// server on the first datagram, the OpenWrt init script turns UCI configs
// into command lines the flag parser takes, the git hook commits what atftp
// uploaded, and every file passes the checker its kind has (sh -n,
// shellcheck, man, systemd-analyze).
package main

import (
	"bufio"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestSocketActivation runs the server the way systemd starts it from
// contrib/systemd/r-tftpd.socket, with Debian's systemd-socket-activate: the
// sockets are opened before the server runs, which starts on the first
// datagram, reports readiness and serves that very request, then requests
// on every other socket passed.
func TestSocketActivation(t *testing.T) {
	for _, ips := range [][]string{{"127.0.0.1"}, {"127.0.0.1", "::1", "127.0.0.2"}} {
		t.Run(strings.Join(ips, ","), func(t *testing.T) { testSocketActivation(t, ips) })
	}
}

func testSocketActivation(t *testing.T, ips []string) {
	activate := needClient(t, "systemd-socket-activate")
	root := t.TempDir()
	want := randomBytes(50_000, 70)
	if err := os.WriteFile(filepath.Join(root, "boot.img"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	var addrs []netip.AddrPort
	args := []string{"--datagram"}
	for _, ip := range ips {
		// A port free now, for systemd-socket-activate to bind.
		probe, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), 0)))
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, probe.LocalAddr().(*net.UDPAddr).AddrPort())
		probe.Close()
		args = append(args, "--listen", addrs[len(addrs)-1].String())
	}
	notifyPath := filepath.Join(t.TempDir(), "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()

	cmd := exec.Command(activate, append(args, "-E", "NOTIFY_SOCKET="+notifyPath, serverBinary, "--systemd", "-r", root)...)
	type fetched struct {
		res *clientResult
		err error
	}
	done := make(chan fetched, 1)
	go func() {
		// The request that starts the server: retried until it answers.
		res, err := tftpGet(addrs[0], "boot.img", clientOptions{blksize: 1468, windowsize: 4, tsize: true})
		done <- fetched{res, err}
	}()
	srv := startBinary(t, cmd)
	expectNotify(t, notify, "READY=1")
	f := <-done
	if f.err != nil {
		t.Fatal(f.err)
	}
	assertSame(t, f.res.data, want)
	for _, addr := range addrs[1:] {
		res, err := tftpGet(addr, "boot.img", clientOptions{blksize: 1400})
		if err != nil {
			t.Fatalf("%v: %v", addr, err)
		}
		assertSame(t, res.data, want)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	expectNotify(t, notify, "STOPPING=1")
	if err := srv.wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

// uciSection is one "config" block of an OpenWrt UCI file.
type uciSection struct {
	kind, name string
	options    map[string]string
}

// parseUCI reads the subset of UCI syntax the shipped config uses: config,
// option and list lines, values bare or in single or double quotes, #
// comments. A list's values are joined by spaces, as config_get gives them.
func parseUCI(t *testing.T, text string) []uciSection {
	var sections []uciSection
	unquote := func(s string) string {
		if len(s) >= 2 && (s[0] == '\'' || s[0] == '"') && s[len(s)-1] == s[0] {
			return s[1 : len(s)-1]
		}
		return s
	}
	lines := bufio.NewScanner(strings.NewReader(text))
	for n := 1; lines.Scan(); n++ {
		line := strings.TrimSpace(lines.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		keyword, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch keyword {
		case "config":
			kind, name, _ := strings.Cut(rest, " ")
			sections = append(sections, uciSection{kind: kind, name: unquote(strings.TrimSpace(name)), options: map[string]string{}})
		case "option", "list":
			if len(sections) == 0 {
				t.Fatalf("line %d: %s outside a section", n, keyword)
			}
			name, value, _ := strings.Cut(rest, " ")
			value = unquote(strings.TrimSpace(value))
			if old, ok := sections[len(sections)-1].options[name]; ok && keyword == "list" {
				value = old + " " + value
			}
			sections[len(sections)-1].options[name] = value
		default:
			t.Fatalf("line %d: %q is not UCI this test reads", n, line)
		}
	}
	return sections
}

// openwrtShim stands in for OpenWrt's /lib/functions.sh and procd.sh: the
// config values come from CONFIG_<section>_<option> variables as
// config_load leaves them, and procd calls print what they were given.
const openwrtShim = `
config_load() { :; }
config_foreach() { for _s in $R_TFTPD_SECTIONS; do "$1" "$_s"; done; }
config_get() {
	eval "_v=\${CONFIG_$2_$3:-\$4}"
	eval "$1=\$_v"
}
config_get_bool() {
	config_get "$@"
	eval "_v=\$$1"
	case "$_v" in 1|on|true|yes|enabled) _v=1 ;; *) _v=0 ;; esac
	eval "$1=\$_v"
}
procd_open_instance() { echo "instance $1"; }
procd_set_param() {
	case "$1" in
		command) shift; printf 'arg %s\n' "$@" ;;
		*) echo "param $1" ;;
	esac
}
procd_append_param() { shift; printf 'arg %s\n' "$@"; }
procd_close_instance() { echo "end"; }
`

// openwrtInstances runs the init script's start_service against a UCI
// config and returns each enabled instance's command line.
func openwrtInstances(t *testing.T, config string) map[string][]string {
	t.Helper()
	// OpenWrt's shell is busybox ash.
	shell := []string{needClient(t, "busybox"), "sh"}
	env := os.Environ()
	var names []string
	for _, s := range parseUCI(t, config) {
		if s.kind != "r-tftpd" {
			continue
		}
		names = append(names, s.name)
		for k, v := range s.options {
			env = append(env, "CONFIG_"+s.name+"_"+k+"="+v)
		}
	}
	env = append(env, "R_TFTPD_SECTIONS="+strings.Join(names, " "))
	script := openwrtShim + `. "$0"; start_service`
	cmd := exec.Command(shell[0], append(shell[1:], "-c", script, "contrib/openwrt/r-tftpd/files/r-tftpd.init")...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("start_service: %v\n%s", err, out)
	}
	instances := map[string][]string{}
	var current string
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		switch word, rest, _ := strings.Cut(line, " "); word {
		case "instance":
			current = rest
			instances[current] = nil
		case "arg":
			instances[current] = append(instances[current], rest)
		case "param", "end", "":
		default:
			t.Fatalf("unexpected output %q", line)
		}
	}
	return instances
}

// TestOpenWrtInitScript maps UCI configs to command lines with the init
// script's own functions, and checks each command line with the server's
// flag parser.
func TestOpenWrtInitScript(t *testing.T) {
	shipped, err := os.ReadFile("contrib/openwrt/r-tftpd/files/r-tftpd.config")
	if err != nil {
		t.Fatal(err)
	}
	if got := openwrtInstances(t, string(shipped)); len(got) != 0 {
		t.Fatalf("the shipped config starts %v; it should start disabled", got)
	}
	enabledShipped := strings.Replace(string(shipped), "option enabled '0'", "option enabled '1'", 1)
	cases := []struct {
		name   string
		config string
		want   map[string][]string
	}{
		{"shipped, enabled", enabledShipped, map[string][]string{"main": {
			"/usr/sbin/r-tftpd", "--root", "/srv/tftp", "--port", "69", "--max-connections", "64",
			"--timeout", "3", "--cache-dir", "/tmp", "--log-format", "compact"}}},
		{"defaults", "config r-tftpd 'main'\n\toption enabled 1\n", map[string][]string{"main": {
			"/usr/sbin/r-tftpd", "--root", "/srv/tftp", "--port", "69", "--log-format", "compact"}}},
		{"everything", `
config r-tftpd 'lab'
	option enabled 'yes'
	option root '/srv/boot images'
	option port '6969'
	option listen '::1'
	option max_connections '200'
	option timeout '0.5'
	option fallback 'http+nocompress://127.0.0.1:8080/boot/'
	option cache_dir '/tmp'
	option map_file 'contrib/map-files/windows.rules'
	option extra_options '--max-windowsize 16 --single-port --log-format json'
`, map[string][]string{"lab": {
			"/usr/sbin/r-tftpd", "--root", "/srv/boot images", "--port", "6969", "--listen", "::1",
			"--max-connections", "200", "--timeout", "0.5", "--fallback", "http+nocompress://127.0.0.1:8080/boot/",
			"--cache-dir", "/tmp", "--map-file", "contrib/map-files/windows.rules", "--log-format", "compact",
			"--max-windowsize", "16", "--single-port", "--log-format", "json"}}},
		{"uploads", `
config r-tftpd 'backup'
	option enabled '1'
	option upload_dir '/srv/tftp/backups'
	option upload_overwrite '1'
	option upload_mode '0640'
	option upload_max_size '8M'
	option upload_http '1'
`, map[string][]string{"backup": {
			"/usr/sbin/r-tftpd", "--root", "/srv/tftp", "--port", "69", "--upload-dir", "/srv/tftp/backups",
			"--upload-overwrite", "--upload-mode", "0640", "--upload-max-size", "8M", "--upload-http", "--log-format", "compact"}}},
		{"operators", `
config r-tftpd 'ops'
	option enabled '1'
	option metrics '[::]:9169'
	option hook '/usr/lib/r-tftpd/git-commit-upload /srv/configs.git /srv/tftp/configs'
`, map[string][]string{"ops": {
			"/usr/sbin/r-tftpd", "--root", "/srv/tftp", "--port", "69", "--metrics", "[::]:9169",
			"--hook", "/usr/lib/r-tftpd/git-commit-upload /srv/configs.git /srv/tftp/configs", "--log-format", "compact"}}},
		{"relay only, folder options ignored", `
config r-tftpd 'relay'
	option enabled '1'
	option upload_overwrite '1'
	option upload_max_size '1G'
	option upload_http 'yes'
`, map[string][]string{"relay": {
			"/usr/sbin/r-tftpd", "--root", "/srv/tftp", "--port", "69", "--upload-max-size", "1G", "--upload-http", "--log-format", "compact"}}},
		{"listening where asked", `
config r-tftpd 'lan'
	option enabled '1'
	list listen '192.168.1.1'
	list listen 'fd00::1'
	option interface 'lo  br-lan'
	option port_range '50000:50100'
	option user 'nobody'
`, map[string][]string{"lan": {
			"/usr/sbin/r-tftpd", "--root", "/srv/tftp", "--port", "69", "--listen", "192.168.1.1", "--listen", "fd00::1",
			"--interface", "lo", "--interface", "br-lan", "--port-range", "50000:50100", "--user", "nobody",
			"--log-format", "compact"}}},
		{"two instances, one off", `
config r-tftpd 'a'
	option enabled '1'
	option port '1069'
config r-tftpd 'b'
	option enabled '0'
	option port '2069'
config other 'c'
	option enabled '1'
`, map[string][]string{"a": {"/usr/sbin/r-tftpd", "--root", "/srv/tftp", "--port", "1069", "--log-format", "compact"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := openwrtInstances(t, c.config)
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("instances\n%q\nwant\n%q", got, c.want)
			}
			for name, argv := range got {
				args := append([]string(nil), argv[1:]...)
				for i := range args {
					switch {
					case i > 0 && (args[i-1] == "--root" || args[i-1] == "--upload-dir"):
						args[i] = t.TempDir() // the router's folders are not here
					case i > 0 && args[i-1] == "--interface":
						args[i] = "lo" // nor its interfaces
					}
					if i > 0 && args[i-1] == "--hook" {
						args[i] = "/bin/sh" + args[i][strings.Index(args[i], " "):] // nor its hook
					}
				}
				cfg, err := parseFlags(args, nil)
				if err != nil {
					t.Fatalf("%s: the server refuses its command line: %v", name, err)
				}
				port, _ := strconv.Atoi(args[slices.Index(args, "--port")+1])
				if cfg.port != port {
					t.Fatalf("%s: port %d, want %d", name, cfg.port, port)
				}
				if n := max(1, countOf(args, "--listen")); len(cfg.listen) != n || len(cfg.interfaces) != countOf(args, "--interface") {
					t.Fatalf("%s: listening on %v at %v, want %d addresses and %d interfaces",
						name, cfg.listen, cfg.interfaces, n, countOf(args, "--interface"))
				}
			}
		})
	}
}

// countOf is how many times s is among args.
func countOf(args []string, s string) int {
	n := 0
	for _, a := range args {
		if a == s {
			n++
		}
	}
	return n
}

// TestContribFilesPassTheirCheckers runs the checkers CI relies on: the init
// script through sh -n and shellcheck, the man page through man --warnings,
// the systemd units through systemd-analyze verify (which wants ExecStart's
// binary to exist, so the service names the test's).
func TestContribFilesPassTheirCheckers(t *testing.T) {
	const initScript = "contrib/openwrt/r-tftpd/files/r-tftpd.init"
	const gitHook = "contrib/hooks/git-commit-upload"
	units := t.TempDir()
	service, err := os.ReadFile("contrib/systemd/r-tftpd.service")
	if err != nil {
		t.Fatal(err)
	}
	service = []byte(strings.ReplaceAll(string(service), "/usr/local/sbin/r-tftpd", serverBinary))
	socket, err := os.ReadFile("contrib/systemd/r-tftpd.socket")
	if err != nil {
		t.Fatal(err)
	}
	for name, text := range map[string][]byte{"r-tftpd.service": service, "r-tftpd.socket": socket} {
		if err := os.WriteFile(filepath.Join(units, name), text, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Each check needs its own tool and skips alone when that is missing.
	checks := []struct {
		tool string
		args []string
		page bool // prints the page; only warnings on stderr count
	}{
		{"sh", []string{"-n", initScript}, false},
		{"busybox", []string{"sh", "-n", initScript}, false},
		{"shellcheck", []string{initScript, gitHook}, false},
		{"sh", []string{"-n", gitHook}, false},
		{"man", []string{"--warnings", "-E", "UTF-8", "-l", "contrib/r-tftpd.8"}, true},
		{"systemd-analyze", []string{"verify", "--man=no",
			filepath.Join(units, "r-tftpd.socket"), filepath.Join(units, "r-tftpd.service")}, false},
	}
	for _, c := range checks {
		t.Run(c.tool, func(t *testing.T) {
			cmd := exec.Command(needClient(t, c.tool), c.args...)
			cmd.Env = append(os.Environ(), "MANWIDTH=80")
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if c.page {
				out = nil
			}
			if err != nil || stderr.Len() > 0 || len(out) > 0 {
				t.Errorf("%s %s: %v\n%s%s", c.tool, strings.Join(c.args, " "), err, out, stderr.String())
			}
		})
	}
}

// TestGitCommitUploadHook: contrib/hooks/git-commit-upload, as the --hook
// of a server that takes uploads, commits each config atftp uploads, once
// per change, under the name the client chose, and leaves reads alone.
func TestGitCommitUploadHook(t *testing.T) {
	git, atftp := needClient(t, "git"), interopCase{client: "atftp", name: "atftp put", args: atftpArgs(opWRQ)}
	hook, err := filepath.Abs("contrib/hooks/git-commit-upload")
	if err != nil {
		t.Fatal(err)
	}
	root, uploads := t.TempDir(), t.TempDir()
	repo := filepath.Join(t.TempDir(), "configs.git")
	if out, err := exec.Command(git, "init", "-q", "--bare", repo).CombinedOutput(); err != nil {
		t.Fatalf("git init: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(root, "boot.img"), randomBytes(2000, 150), 0o644)
	srv := startBinary(t, exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", root,
		"--upload-dir", uploads, "--upload-overwrite", "--hook", hook+" "+repo+" "+uploads))
	host, port := srv.addr.Addr().String(), strconv.Itoa(int(srv.addr.Port()))
	gitOut := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(git, append([]string{"--git-dir", repo}, args...)...).Output()
		if err != nil {
			t.Fatalf("git %s: %v", strings.Join(args, " "), err)
		}
		return string(out)
	}
	upload := func(name string, config []byte) {
		t.Helper()
		local := filepath.Join(t.TempDir(), "config")
		os.WriteFile(local, config, 0o644)
		runClient(t, atftp, host, port, name, local)
		if line := srv.awaitLog(t, "msg=\"hook "); !strings.Contains(line, `msg="hook ran"`) {
			t.Fatalf("the git hook: %s", line)
		}
	}
	first, second := []byte("hostname sw1\ninterface eth0\n"), []byte("hostname sw1\ninterface eth0\n mtu 9000\n")
	upload("sw1.cfg", first)
	upload("sw1.cfg", second)
	upload("sw1.cfg", second) // unchanged: no commit
	upload("-rf", first)
	// A name is no pathspec: ":(glob)*" commits that file, not every one.
	os.WriteFile(filepath.Join(uploads, "not-uploaded.txt"), []byte("x"), 0o644)
	upload(":(glob)*", first)
	fetchWithClient(t, interopCase{client: "atftp", name: "atftp", args: atftpArgs(opRRQ)}, host, port, "boot.img")
	srv.awaitLog(t, `msg="hook ran"`)

	if log := strings.Fields(gitOut("log", "--format=%s", "--", "sw1.cfg")); !slices.Equal(log, []string{"sw1.cfg", "from", "127.0.0.1", "sw1.cfg", "from", "127.0.0.1"}) {
		t.Fatalf("sw1.cfg's history: %q, want two commits", log)
	}
	if got := gitOut("show", "HEAD:sw1.cfg"); got != string(second) {
		t.Fatalf("sw1.cfg as committed last: %q", got)
	}
	if got := gitOut("show", "HEAD:-rf"); got != string(first) {
		t.Fatalf("-rf as committed: %q", got)
	}
	if count := strings.TrimSpace(gitOut("rev-list", "--count", "HEAD")); count != "4" {
		t.Fatalf("%s commits, want 4 (two of sw1.cfg, one of -rf, one of :(glob)*)", count)
	}
	if files := strings.Fields(gitOut("ls-tree", "--name-only", "HEAD")); !slices.Equal(files, []string{"-rf", ":(glob)*", "sw1.cfg"}) {
		t.Fatalf("committed files %q, want -rf, :(glob)* and sw1.cfg", files)
	}
	body := gitOut("log", "-1", "--format=%b")
	if !strings.Contains(body, "TFTP-Client: 127.0.0.1 port ") || !strings.Contains(body, "TFTP-SHA256: ") || !strings.Contains(body, "TFTP-Bytes: 28\n") {
		t.Fatalf("commit message body %q", body)
	}
}
