// The TFTP wire codec, at the bottom of the package: opcodes, every packet
// kind parsed and built into buffers the caller owns, RFC 2347/2348/2349/7440
// option negotiation as a decision plus the OACK that carries it, and every
// text a client can be told, with the one function that turns an internal
// failure into one of them.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	opRRQ   = 1
	opWRQ   = 2
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// TFTP error codes (RFC 1350, RFC 2347).
const (
	codeUndefined  = 0
	codeNotFound   = 1
	codeAccess     = 2
	codeDiskFull   = 3
	codeIllegalOp  = 4
	codeUnknownTID = 5
	codeFileExists = 6
)

const (
	defaultBlksize = 512
	minBlksize     = 8
	maxBlksize     = 65464
	maxWindowsize  = 65535
	// maxTsize is the largest tsize answered: UEFI firmware keeps it in 32 bits.
	maxTsize = 1<<32 - 1
	// maxRequest bounds what is read from the listening socket; a request is
	// a name and a few options, far below this.
	maxRequest = 65536
)

// wireError is an error that travels to the client as an ERROR packet. Its
// text is what the client sees, so it never holds a server path or a URL.
type wireError struct {
	code uint16
	msg  string
}

func (e *wireError) Error() string { return e.msg }

func newWireError(code uint16, format string, args ...any) *wireError {
	return &wireError{code: code, msg: fmt.Sprintf(format, args...)}
}

// Every fixed text a client can be told, by the part of the server that
// tells it. Keeping them in one place keeps them free of paths and URLs.
var (
	// Requests and transfers.
	errNotFound     = &wireError{codeNotFound, "file not found"}
	errAccess       = &wireError{codeAccess, "access violation"}
	errIsDir        = &wireError{codeAccess, "is a directory"}
	errNotFile      = &wireError{codeAccess, "not a regular file"}
	errOutside      = &wireError{codeAccess, "path outside the served root"}
	errBusy         = &wireError{codeUndefined, "server busy, try again later"}
	errTimeout      = &wireError{codeUndefined, "timed out waiting for the client"}
	errNoProgress   = &wireError{codeUndefined, "no progress: resent blocks are not arriving"}
	errWriteDenied  = &wireError{codeAccess, "writing is not allowed"}
	errUnknownTID   = &wireError{codeUnknownTID, "unknown transfer ID"}
	errShutdown     = &wireError{codeUndefined, "server shutting down"}
	errNameTooLong  = &wireError{codeNotFound, "file name too long"}
	errNoSocket     = &wireError{codeUndefined, "cannot open transfer socket"}
	errExpectedAck  = &wireError{codeIllegalOp, "expected an ACK"}
	errExpectedData = &wireError{codeIllegalOp, "expected DATA"}
	errDataTooLarge = &wireError{codeIllegalOp, "DATA block larger than blksize"}
	errInternal     = &wireError{codeUndefined, "internal error"}

	// Uploads (upload.go).
	errFileExists     = &wireError{codeFileExists, "file already exists"}
	errBeingWritten   = &wireError{codeUndefined, "file is being written by another upload"}
	errUploadTooLarge = &wireError{codeDiskFull, "upload larger than the server accepts"}
	errDiskFull       = &wireError{codeDiskFull, "disk full"}
	errNoFolder       = &wireError{codeNotFound, "folder not found (folders are not created)"}
	errUploadSymlink  = &wireError{codeAccess, "uploads never go through a symlink"}
	errRelayDisabled  = &wireError{codeAccess, "relaying uploads is disabled on this server"}

	// Name mapping (remap.go).
	errMapRunaway = &wireError{codeUndefined, "file name mapping did not finish"}
	errMapTooLong = &wireError{codeUndefined, "file name too long"}
	errMapRefused = &wireError{codeAccess, "access denied"}
	errMapNoLabel = &wireError{codeUndefined, "file name mapping failed"}

	// Proxy links (proxy.go), the cache (cache.go) and origins (origin.go).
	errProxyDisabled         = &wireError{codeNotFound, "proxying is disabled on this server"}
	errBadURLScheme          = &wireError{codeUndefined, "unsupported URL scheme in proxy link"}
	errBadProxyURL           = &wireError{codeUndefined, "malformed URL in proxy link"}
	errCacheUnavailable      = &wireError{codeUndefined, "proxy cache unavailable"}
	errUpstreamDown          = &wireError{codeUndefined, "upstream server unreachable"}
	errUpstreamBroken        = &wireError{codeUndefined, "upstream download failed"}
	errUpstreamStall         = &wireError{codeUndefined, "upstream download stalled"}
	errUpstreamRefusedUpload = &wireError{codeAccess, "upstream refused the upload"}
	errUpstreamFull          = &wireError{codeDiskFull, "upstream has no room for the upload"}
	errUpstreamUploadBroken  = &wireError{codeUndefined, "upstream connection broken during the upload"}

	// A build without proxy support (noproxy.go).
	errNoProxySupport = &wireError{codeNotFound, "this server is built without proxy support"}
	errNoProxyUpload  = &wireError{codeAccess, "this server is built without proxy support"}
)

// Ends of a transfer that the client is not told of.
var (
	// errClientAbort: the client sent an ERROR (RFC 1350: never answered).
	errClientAbort = errors.New("client sent ERROR")
	// errSuperseded: the same client port has sent a new request, so the
	// client has left this transfer, and anything more from it would reach
	// the new one.
	errSuperseded = errors.New("superseded by a new request from the same client port")
	// errClientGone: an ICMP port unreachable came back from the client's
	// port, so it is closed and the transfer is over for the client: it
	// exited, with the final block or without. RFC 1122 (4.2.3.9) has TCP
	// end a connection on it too.
	errClientGone = errors.New("the client's port is closed (ICMP port unreachable)")
)

// toWireError decides, for any failure, what the client is told. It is the
// only place where internal errors become codes and texts.
func toWireError(err error) *wireError {
	var we *wireError
	switch {
	case errors.As(err, &we):
		return we
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return errNotFound
	case errors.Is(err, fs.ErrPermission):
		return errAccess
	case errors.Is(err, syscall.EISDIR):
		return errIsDir
	case errors.Is(err, syscall.ENAMETOOLONG):
		return errNameTooLong
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return errDiskFull
	case errors.Is(err, fs.ErrExist):
		return errFileExists
	default:
		return errInternal
	}
}

// toldToClient reports whether a transfer that ends with err tells its
// client so: not when the client itself ended it or has left it.
func toldToClient(err error) bool {
	return !errors.Is(err, errClientAbort) && !errors.Is(err, errSuperseded) && !errors.Is(err, errClientGone)
}

// packetOp is a packet's opcode, 0 for one too short to have one.
func packetOp(b []byte) uint16 {
	if len(b) < 2 {
		return 0
	}
	return uint16(b[0])<<8 | uint16(b[1])
}

// appendError builds an ERROR packet.
func appendError(b []byte, we *wireError) []byte {
	b = append(b, 0, opERROR, byte(we.code>>8), byte(we.code))
	b = append(b, we.msg...)
	return append(b, 0)
}

// putHeader writes a DATA or ACK header for block blk into p[:4].
func putHeader(p []byte, op, blk uint16) {
	p[0], p[1], p[2], p[3] = 0, byte(op), byte(blk>>8), byte(blk)
}

// parseAck reads an ACK's block number.
func parseAck(b []byte) (blk uint16, ok bool) {
	if len(b) < 4 || packetOp(b) != opACK {
		return 0, false
	}
	return uint16(b[2])<<8 | uint16(b[3]), true
}

// parseData reads a DATA packet's block number and payload.
func parseData(b []byte) (blk uint16, payload []byte, ok bool) {
	if len(b) < 4 || packetOp(b) != opDATA {
		return 0, nil, false
	}
	return uint16(b[2])<<8 | uint16(b[3]), b[4:], true
}

// maxLoggedText is how much of a requested name, or of an error that may
// quote one, a log line carries.
const maxLoggedText = 255

// logText is a client-chosen text as logged: a long one is cut, with its
// length, so no request can make a log line long.
func logText(s string) string {
	if len(s) <= maxLoggedText {
		return s
	}
	return s[:maxLoggedText] + "... (" + strconv.Itoa(len(s)) + " bytes)"
}

// option is one name/value pair of a request, name lowercased.
type option struct {
	name, value string
}

type request struct {
	op       uint16
	filename string
	netascii bool
	options  []option
}

// opName names a request's operation as logs and metrics do.
func (req *request) opName() string {
	if req.op == opWRQ {
		return "write"
	}
	return "read"
}

// refusableOptions are the options --refuse takes, tftpd-hpa's names;
// blksize2, which this server never acknowledges, so that a tftpd-hpa
// command line that refuses it still starts.
var refusableOptions = []string{"blksize", "tsize", "timeout", "windowsize", "utimeout", "rollover", "blksize2"}

// dropOptions removes the options named: the request is then as if the
// client had not sent them.
func (req *request) dropOptions(names []string) {
	if len(names) == 0 {
		return
	}
	req.options = slices.DeleteFunc(req.options, func(o option) bool { return slices.Contains(names, o.name) })
}

func (req *request) hasOption(name string) bool {
	for _, o := range req.options {
		if o.name == name {
			return true
		}
	}
	return false
}

// tsize is the size a WRQ announces, -1 without a valid tsize.
func (req *request) tsize() int64 {
	for _, o := range req.options {
		if o.name == "tsize" {
			if n, ok := parseOptionNumber(o.value, 0, 1<<62); ok {
				return n
			}
			return -1
		}
	}
	return -1
}

// parseRequest decodes an RRQ or WRQ. Trailing NUL padding, as some boot ROMs
// send, is tolerated; a name without a value at the end is ignored.
func parseRequest(b []byte) (*request, error) {
	if len(b) < 2 {
		return nil, newWireError(codeIllegalOp, "packet too short")
	}
	op := packetOp(b)
	if op != opRRQ && op != opWRQ {
		return nil, newWireError(codeIllegalOp, "not a request")
	}
	body := b[2:]
	if len(body) == 0 || body[len(body)-1] != 0 {
		return nil, newWireError(codeIllegalOp, "malformed request: missing NUL terminator")
	}
	fields := bytes.Split(body[:len(body)-1], []byte{0})
	if len(fields[0]) == 0 {
		return nil, newWireError(codeIllegalOp, "malformed request: empty file name")
	}
	if len(fields) < 2 || len(fields[1]) == 0 {
		return nil, newWireError(codeIllegalOp, "malformed request: missing transfer mode")
	}
	req := &request{op: op, filename: string(fields[0])}
	switch strings.ToLower(string(fields[1])) {
	case "octet", "binary":
	case "netascii":
		req.netascii = true
	case "mail":
		return nil, newWireError(codeIllegalOp, "mail mode is not supported")
	default:
		return nil, newWireError(codeIllegalOp, "unknown transfer mode")
	}
	for i := 2; i+1 < len(fields); i += 2 {
		if len(fields[i]) == 0 {
			break
		}
		req.options = append(req.options, option{strings.ToLower(string(fields[i])), string(fields[i+1])})
	}
	return req, nil
}

// parseOptionNumber accepts a plain decimal number within [lo, hi].
func parseOptionNumber(v string, lo, hi int64) (int64, bool) {
	if v == "" || len(v) > 20 {
		return 0, false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, false
	}
	return n, true
}

// transferParams is what a session runs with after negotiation.
type transferParams struct {
	blksize    int
	windowsize int
	timeout    time.Duration
	// rollover is the block number after 65535: 0, or 1 when the client
	// asked for it (the rollover option).
	rollover uint16
	// answers are the options the OACK acknowledges, in the client's
	// order; none means no OACK is sent.
	answers []option
}

// negotiateLimits are the server's side of option negotiation.
type negotiateLimits struct {
	maxBlksize     int
	maxWindowsize  int
	maxWindowBytes int
	timeout        time.Duration
	noOptions      bool
}

// negotiate answers the client's options. size is the size of what is served
// (-1 when unknown). The answers echo only options that were asked for and
// are accepted, never a blksize or windowsize larger than asked, and timeout
// exactly as asked. Invalid or unknown options are left out and reported to
// ignored for logging.
func negotiate(req *request, size int64, lim negotiateLimits, ignored func(option)) transferParams {
	p := transferParams{blksize: defaultBlksize, windowsize: 1, timeout: lim.timeout}
	if lim.noOptions {
		return p
	}
	seen := map[string]bool{}
	windowAsked := -1
	for _, o := range req.options {
		if seen[o.name] {
			ignored(o)
			continue
		}
		seen[o.name] = true
		answer, ok := negotiateOption(req.op, o, size, lim, &p)
		if !ok {
			ignored(o)
			continue
		}
		if o.name == "windowsize" {
			windowAsked, _ = strconv.Atoi(o.value)
		}
		p.answers = append(p.answers, option{o.name, answer})
	}
	if windowAsked > 0 {
		// One window must fit the receiver's socket buffer, or it overflows
		// and the window is lost again and again.
		fit := max(1, lim.maxWindowBytes/p.blksize)
		p.windowsize = min(windowAsked, lim.maxWindowsize, fit)
		if p.rollover == 1 {
			// Numbers then repeat every 65535 blocks: a window as long
			// would give its last block the number of the one before it.
			p.windowsize = min(p.windowsize, maxWindowsize-1)
		}
	}
	for i, a := range p.answers {
		switch a.name {
		case "blksize":
			p.answers[i].value = strconv.Itoa(p.blksize)
		case "windowsize":
			p.answers[i].value = strconv.Itoa(p.windowsize)
		}
	}
	return p
}

// negotiateOption decides one option of a request op: the value the OACK
// answers (blksize and windowsize are filled in once all are decided) and
// whether the option is acknowledged at all.
func negotiateOption(op uint16, o option, size int64, lim negotiateLimits, p *transferParams) (string, bool) {
	switch o.name {
	case "blksize":
		n, ok := parseOptionNumber(o.value, minBlksize, 1<<31)
		if !ok {
			return "", false
		}
		p.blksize = int(min(n, int64(maxBlksize), int64(lim.maxBlksize)))
		return "", true
	case "windowsize":
		_, ok := parseOptionNumber(o.value, 1, maxWindowsize)
		return "", ok
	case "timeout":
		n, ok := parseOptionNumber(o.value, 1, 255)
		if ok {
			p.timeout = time.Duration(n) * time.Second
		}
		return o.value, ok
	case "utimeout":
		// tftpd-hpa's timeout in microseconds, 10 ms to 255 s; the later
		// of timeout and utimeout in the request is the one that holds.
		n, ok := parseOptionNumber(o.value, 10_000, 255_000_000)
		if ok {
			p.timeout = time.Duration(n) * time.Microsecond
		}
		return o.value, ok
	case "rollover":
		n, ok := parseOptionNumber(o.value, 0, 1)
		if ok {
			p.rollover = uint16(n)
		}
		return o.value, ok
	case "tsize":
		if op == opWRQ {
			_, ok := parseOptionNumber(o.value, 0, 1<<62)
			return o.value, ok
		}
		// Any value is taken as 0: atftp sends "tsize enable". An empty
		// file gets no tsize, because curl rejects "tsize 0" in an OACK
		// and fails the transfer.
		if size <= 0 || size > maxTsize {
			return "", false
		}
		return strconv.FormatInt(size, 10), true
	}
	return "", false
}

// appendOACK builds the OACK packet of a negotiation's answers.
func appendOACK(b []byte, answers []option) []byte {
	b = append(b, 0, opOACK)
	for _, a := range answers {
		b = append(b, a.name...)
		b = append(b, 0)
		b = append(b, a.value...)
		b = append(b, 0)
	}
	return b
}
