// Turning a requested name into something to serve: a local file (read a
// window at a time), or a URL that the cache (cache.go) fetches. Names are resolved below the served root:
// a leading "/" is dropped, "." and empty components are skipped and ".." is
// refused, so no request reaches a file outside the root except through a
// symlink an administrator put inside it. A symlink whose target is a URL
// (http[+modifier...]://...) relays everything below it to that URL; each
// further name component is percent-escaped, so no request reaches a URL
// outside the link's base either.
package main

import (
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fileSource serves a local file: a window's blocks come in one preadv,
// and a lockstep transfer's from a buffer read ahead.
type fileSource struct {
	*os.File
	size int64
	raw  syscall.RawConn
	// ahead holds the file from aheadOff on, read in one call for the
	// windows that follow: a lockstep client asks for one block a round
	// trip, and a read per block would be a quarter of its system calls.
	ahead    []byte
	aheadOff int64
	// readFn is preadv bound once, so raw.Read takes it without
	// allocating; it reads iovs at readOff and leaves what it found in
	// readN and readErrno.
	readFn    func(fd uintptr) bool
	iovs      []unix.Iovec
	readOff   int64
	readN     int
	readErrno syscall.Errno
}

func (f *fileSource) Size() int64 { return f.size }

func (f *fileSource) knownSize() int64 { return f.size }

// ReadAt is File.ReadAt up to the size the file had when it was opened, as
// readBlocks is: netascii reads by it.
func (f *fileSource) ReadAt(p []byte, off int64) (int, error) {
	rest := f.size - off
	if rest >= int64(len(p)) {
		return f.File.ReadAt(p, off)
	}
	if rest <= 0 {
		return 0, io.EOF
	}
	n, err := f.File.ReadAt(p[:rest], off)
	if err == nil {
		err = io.EOF
	}
	return n, err
}

// readAheadSize is the read-ahead buffer of a transfer whose windows are
// at most a quarter of it: 11 blocks of 1468 bytes, 32 of 512.
const readAheadSize = 16 << 10

// readBlocks reads blocks at off, never past the size the file had when it
// was opened: a file that grows meanwhile is sent as long as it was, the
// length a tsize told the client, whichever way it is read.
func (f *fileSource) readBlocks(off int64, blocks [][]byte) (n, calls int, err error) {
	switch want := len(blocks) * len(blocks[0]); {
	case f.raw == nil:
		n, calls, err = readBlocksAt(f.File, off, blocks)
	case want <= readAheadSize/4:
		n, calls, err = f.readAhead(off, blocks, want)
	default:
		n, calls, err = f.preadvBlocks(off, blocks)
	}
	return int(min(int64(n), max(f.size-off, 0))), calls, err
}

// readAhead copies blocks from the read-ahead buffer, filling it first
// from off when it does not hold all want bytes there (or the file's end).
func (f *fileSource) readAhead(off int64, blocks [][]byte, want int) (int, int, error) {
	calls := 0
	end := f.aheadOff + int64(len(f.ahead))
	if off < f.aheadOff || off+int64(want) > end && end < f.size {
		if f.ahead == nil {
			// A file smaller than the buffer needs only its size (a
			// byte at least, for the read's vector): most of a boot's
			// files (menus, scripts, configurations) are.
			f.ahead = make([]byte, min(readAheadSize, max(f.size, 1)))
		}
		n, _, err := f.preadvBlocks(off, [][]byte{f.ahead[:cap(f.ahead)]})
		calls++
		f.ahead, f.aheadOff = f.ahead[:n], off
		if err != nil {
			f.ahead = f.ahead[:0]
			return 0, calls, err
		}
	}
	n := 0
	if rest := off - f.aheadOff; rest < int64(len(f.ahead)) {
		data := f.ahead[rest:]
		for _, b := range blocks {
			got := copy(b, data)
			n += got
			data = data[got:]
			if got < len(b) {
				break
			}
		}
	}
	return n, calls, nil
}

// preadvBlocks reads blocks at off in one preadv.
func (f *fileSource) preadvBlocks(off int64, blocks [][]byte) (int, int, error) {
	f.iovs = f.iovs[:0]
	for _, b := range blocks {
		iov := unix.Iovec{Base: &b[0]}
		iov.SetLen(len(b))
		f.iovs = append(f.iovs, iov)
	}
	f.readOff = off
	if err := f.raw.Read(f.readFn); err != nil {
		return 0, 1, err
	}
	if f.readErrno != 0 {
		return 0, 1, f.readErrno
	}
	return f.readN, 1, nil
}

// preadv is one preadv call, for the file's RawConn.
func (f *fileSource) preadv(fd uintptr) bool {
	// The offset goes in two words on 32-bit systems; the double shift
	// leaves nothing for the high word on 64-bit ones.
	lo, hi := uintptr(f.readOff), uintptr(uint64(f.readOff)>>(unsafe.Sizeof(uintptr(0))*8-1)>>1)
	n, _, errno := unix.Syscall6(unix.SYS_PREADV, fd, uintptr(unsafe.Pointer(&f.iovs[0])), uintptr(len(f.iovs)), lo, hi, 0)
	f.readN, f.readErrno = int(n), errno
	return true
}

// cleanRequestPath turns a TFTP file name into a path relative to the root.
// A backslash is an ordinary byte, as on any POSIX file system.
func cleanRequestPath(name string) (string, error) {
	var parts []string
	for _, p := range strings.Split(name, "/") {
		switch p {
		case "", ".":
			continue
		case "..":
			return "", errOutside
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "/"), nil
}

// remoteTarget is a URL to fetch, with the modifiers of the link it came
// from and, with --forward-client, who asks for it.
type remoteTarget struct {
	url        *url.URL        // without modifiers: the cache key
	nocache    bool            // neither looked up in nor stored in the cache
	nocompress bool            // ask for the identity encoding
	client     *clientIdentity // nil: tell the origin nothing
}

// clientIdentity is the TFTP client an origin is told of (--forward-client):
// its address, and its MAC address when the neighbour table knows it.
type clientIdentity struct {
	addr netip.Addr // unmapped: a v4-mapped client is an IPv4 one
	mac  string     // as the summary line and the hook show it, or ""
}

// shown is the URL as logs show it: without a password, and cut when a
// long requested name made it long.
func (rt *remoteTarget) shown() string { return logText(rt.url.Redacted()) }

// isURLTarget reports whether a symlink target is a URL: a lowercase scheme
// with "+"-separated lowercase modifiers, then "://".
func isURLTarget(s string) bool {
	i := strings.Index(s, "://")
	if i <= 0 {
		return false
	}
	for _, part := range strings.Split(s[:i], "+") {
		if part == "" {
			return false
		}
		for j := 0; j < len(part); j++ {
			if part[j] < 'a' || part[j] > 'z' {
				return false
			}
		}
	}
	return true
}

// parseProxyURL reads a URL link target. Unknown modifiers are reported
// through warn and ignored, as r-tftpd does.
func parseProxyURL(target string, warn func(modifier string)) (*remoteTarget, error) {
	i := strings.Index(target, "://")
	if i <= 0 || !isURLTarget(target) {
		return nil, errBadProxyURL
	}
	words := strings.Split(target[:i], "+")
	rt := &remoteTarget{}
	for _, m := range words[1:] {
		switch m {
		case "nocache":
			rt.nocache = true
		case "nocompress":
			rt.nocompress = true
		default:
			warn(m)
		}
	}
	if words[0] != "http" && words[0] != "https" {
		return nil, errBadURLScheme
	}
	u, err := url.Parse(words[0] + target[i:])
	if err != nil || u.Host == "" {
		return nil, errBadProxyURL
	}
	u.Fragment, u.RawFragment = "", ""
	rt.url = u
	return rt, nil
}

// below returns the target with name components appended to its path, each
// escaped as one path segment: "/", "?", "#", "%" and spaces in a TFTP name
// cannot change the query or leave the base, and ".." never gets here.
func (rt *remoteTarget) below(parts []string) *remoteTarget {
	u := *rt.url
	plain, escaped := u.Path, u.EscapedPath()
	for _, p := range parts {
		if !strings.HasSuffix(escaped, "/") {
			plain, escaped = plain+"/", escaped+"/"
		}
		plain, escaped = plain+p, escaped+escapeSegment(p)
	}
	u.Path, u.RawPath = plain, escaped
	out := *rt
	out.url = &u
	return &out
}

// escapeSegment percent-escapes every byte but RFC 3986's unreserved ones.
func escapeSegment(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '.', c == '_', c == '~':
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}

// resolution is where a request leads: a local path or a URL.
type resolution struct {
	local  string
	remote *remoteTarget
}

// resolver resolves request names for one server.
type resolver struct {
	root         string
	fallback     string // a URL or a local directory; "" for none
	disableProxy bool
	log          *slog.Logger
}

// newResolver is the resolver of the server cfg describes.
func newResolver(cfg *config, log *slog.Logger) *resolver {
	return &resolver{root: cfg.root, fallback: cfg.fallback, disableProxy: cfg.disableProxy, log: log}
}

// resolve walks the request below the root. The first URL symlink on the
// way takes the rest of the name. Without one, a name that does not exist
// locally goes to the fallback.
func (r *resolver) resolve(name string) (resolution, error) {
	rel, err := cleanRequestPath(name)
	if err != nil {
		return resolution{}, err
	}
	if rel == "" {
		return resolution{}, errIsDir
	}
	parts := strings.Split(rel, "/")
	dir := r.root
	for i, part := range parts {
		next := filepath.Join(dir, part)
		fi, err := os.Lstat(next)
		if err != nil {
			break // missing: nothing further down can be a link
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			if target, err := os.Readlink(next); err == nil && isURLTarget(target) {
				return r.remote(target, parts[i+1:])
			}
		}
		dir = next
	}
	local := filepath.Join(r.root, rel)
	if r.fallback == "" {
		return resolution{local: local}, nil
	}
	if _, err := os.Stat(local); !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
		return resolution{local: local}, nil
	}
	if isURLTarget(r.fallback) {
		return r.remote(r.fallback, parts)
	}
	return resolution{local: filepath.Join(r.fallback, rel)}, nil
}

func (r *resolver) remote(target string, rest []string) (resolution, error) {
	if r.disableProxy {
		return resolution{}, errProxyDisabled
	}
	rt, err := parseProxyURL(target, func(m string) {
		r.log.Warn("unknown URL modifier ignored", "modifier", m)
	})
	if err != nil {
		return resolution{}, err
	}
	return resolution{remote: rt.below(rest)}, nil
}

// openLocal opens the regular file at path.
func openLocal(path string) (source, error) {
	// O_NONBLOCK keeps a FIFO in the tree from blocking the open; it has no
	// effect on regular files.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	switch {
	case err != nil:
	case fi.IsDir():
		err = errIsDir
	case !fi.Mode().IsRegular():
		err = errNotFile
	default:
		src := &fileSource{File: f, size: fi.Size()}
		if raw, err := f.SyscallConn(); err == nil {
			src.raw, src.readFn = raw, src.preadv
		}
		return src, nil
	}
	f.Close()
	return nil, err
}
