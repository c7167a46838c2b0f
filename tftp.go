// TFTP wire protocol and sessions: this file decodes requests, negotiates
// RFC 2347/2348/2349/7440 options, maps every internal failure to a TFTP
// ERROR in one place, and runs one session per request (a read through
// window.go's sender, a write through its receiver).
package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
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

var (
	errNotFound    = &wireError{codeNotFound, "file not found"}
	errAccess      = &wireError{codeAccess, "access violation"}
	errIsDir       = &wireError{codeAccess, "is a directory"}
	errOutside     = &wireError{codeAccess, "path outside the served root"}
	errBusy        = &wireError{codeUndefined, "server busy, try again later"}
	errTimeout     = &wireError{codeUndefined, "timed out waiting for the client"}
	errWriteDenied = &wireError{codeAccess, "writing is not allowed"}
	errUnknownTID  = &wireError{codeUnknownTID, "unknown transfer ID"}
	errShutdown    = &wireError{codeUndefined, "server shutting down"}
	errNameTooLong = &wireError{codeNotFound, "file name too long"}
)

// errClientAbort ends a session quietly: the client sent an ERROR.
var errClientAbort = errors.New("client sent ERROR")

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
		return &wireError{codeUndefined, "internal error"}
	}
}

// appendError builds an ERROR packet.
func appendError(b []byte, we *wireError) []byte {
	b = append(b, 0, opERROR, byte(we.code>>8), byte(we.code))
	b = append(b, we.msg...)
	return append(b, 0)
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

// parseRequest decodes an RRQ or WRQ. Trailing NUL padding, as some boot ROMs
// send, is tolerated; a name without a value at the end is ignored.
func parseRequest(b []byte) (*request, error) {
	if len(b) < 2 {
		return nil, newWireError(codeIllegalOp, "packet too short")
	}
	op := uint16(b[0])<<8 | uint16(b[1])
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
	// oack holds the OACK packet, or nil when none is to be sent.
	oack []byte
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
// (-1 when unknown). The OACK echoes only options that were asked for and are
// accepted, never a blksize or windowsize larger than asked, and timeout
// exactly as asked. Invalid or unknown options are left out and reported to
// ignored for logging.
func negotiate(req *request, size int64, lim negotiateLimits, ignored func(option)) transferParams {
	p := transferParams{blksize: defaultBlksize, windowsize: 1, timeout: lim.timeout}
	if lim.noOptions || len(req.options) == 0 {
		return p
	}
	type answer struct{ name, value string }
	var answers []answer
	seen := map[string]bool{}
	windowAsked := -1
	for _, o := range req.options {
		if seen[o.name] {
			ignored(o)
			continue
		}
		seen[o.name] = true
		switch o.name {
		case "blksize":
			n, ok := parseOptionNumber(o.value, minBlksize, 1<<31)
			if !ok {
				ignored(o)
				continue
			}
			p.blksize = int(min(n, int64(maxBlksize), int64(lim.maxBlksize)))
			answers = append(answers, answer{"blksize", ""})
		case "windowsize":
			n, ok := parseOptionNumber(o.value, 1, maxWindowsize)
			if !ok {
				ignored(o)
				continue
			}
			windowAsked = int(n)
			answers = append(answers, answer{"windowsize", ""})
		case "timeout":
			n, ok := parseOptionNumber(o.value, 1, 255)
			if !ok {
				ignored(o)
				continue
			}
			p.timeout = time.Duration(n) * time.Second
			answers = append(answers, answer{"timeout", o.value})
		case "tsize":
			if req.op == opWRQ {
				if _, ok := parseOptionNumber(o.value, 0, 1<<62); !ok {
					ignored(o)
					continue
				}
				answers = append(answers, answer{"tsize", o.value})
				continue
			}
			// Any value is taken as 0: atftp sends "tsize enable". An empty
			// file gets no tsize, because curl rejects "tsize 0" in an OACK
			// and fails the transfer.
			if size <= 0 || size > maxTsize {
				ignored(o)
				continue
			}
			answers = append(answers, answer{"tsize", strconv.FormatInt(size, 10)})
		default:
			ignored(o)
		}
	}
	if windowAsked > 0 {
		// One window must fit the receiver's socket buffer, or it overflows
		// and the window is lost again and again.
		fit := max(1, lim.maxWindowBytes/p.blksize)
		p.windowsize = min(windowAsked, lim.maxWindowsize, fit)
	}
	if len(answers) == 0 {
		return p
	}
	oack := []byte{0, opOACK}
	for _, a := range answers {
		v := a.value
		switch a.name {
		case "blksize":
			v = strconv.Itoa(p.blksize)
		case "windowsize":
			v = strconv.Itoa(p.windowsize)
		}
		oack = append(oack, a.name...)
		oack = append(oack, 0)
		oack = append(oack, v...)
		oack = append(oack, 0)
	}
	p.oack = oack
	return p
}

// transferReport is what a finished session reports.
type transferReport struct {
	file                string
	mapped              string // the name served, after --map-file
	blksize, windowsize int
	stats               transferStats
	err                 error
}

// transferStats counts what a session did.
type transferStats struct {
	bytes       int64
	retransmits int
	timeouts    int
	rtt         time.Duration // smoothed round-trip time, when measured
	// dataCalls counts the system calls that read and sent DATA blocks:
	// batching makes it a fraction of the blocks.
	dataCalls int
	// completed is when the final ACK of an upload went out: the receiver
	// lingers after it, and that time is no part of the transfer's rate.
	completed time.Time
}

// session is one transfer.
type session struct {
	server *server
	conn   transferConn
	req    *request
	log    *slog.Logger
	dst    destination
	peer   netip.AddrPort
	params transferParams
	name   string // what is served: the requested name after --map-file
	// finalBlock is set when the final block went out or came in.
	finalBlock *atomic.Bool
	upload     uploadSink // where a WRQ's body goes
	// linger, when set, runs after the transfer is reported and before its
	// socket closes: an upload waits for a repeat of its final block.
	linger func()
}

func (sess *session) fail(err error) {
	we := toWireError(err)
	_ = sess.conn.send(appendError(nil, we))
}

func (sess *session) run() (transferStats, error) {
	cfg := sess.server.cfg
	if err := sess.mapName(); err != nil {
		sess.fail(err)
		return transferStats{}, err
	}
	if sess.req.op == opWRQ {
		sink, err := sess.server.openUpload(sess.req, sess.name)
		if err != nil {
			sess.fail(err)
			return transferStats{}, err
		}
		sess.upload = sink
	}
	var src source
	size := int64(-1)
	if sess.req.op == opRRQ {
		var err error
		src, err = sess.server.open(sess.name)
		if err != nil {
			sess.fail(err)
			return transferStats{}, err
		}
		defer src.Close()
		if sess.req.netascii {
			src = newNetascii(src)
		}
		if sess.hasOption("tsize") {
			size = src.Size()
		}
	}
	capBlk := cfg.maxBlksize
	if capBlk == 0 {
		capBlk = blksizeCap(sess.dst.ifindex, !sess.peer.Addr().Is4())
	}
	maxWindow := cfg.maxWindowsize
	if cfg.singlePort && sess.req.op == opWRQ {
		// The listener queues this many of the client's datagrams for a
		// single-port transfer: a larger window would overflow it.
		maxWindow = min(maxWindow, sharedInboxSize)
	}
	sess.params = negotiate(sess.req, size, negotiateLimits{
		maxBlksize:     capBlk,
		maxWindowsize:  maxWindow,
		maxWindowBytes: cfg.maxWindowBytes,
		timeout:        cfg.timeout,
		noOptions:      cfg.noRFC2347,
	}, func(o option) { sess.log.Debug("option ignored", "name", o.name, "value", o.value) })

	if sess.req.op == opWRQ {
		r := newReceiver(sess.conn, sess.upload, sess.params, sess.req.netascii, cfg.retries, sess.server.stop)
		r.finalBlock = sess.finalBlock
		stats, err := r.run()
		if err == nil {
			sess.linger = r.linger
		}
		return stats, err
	}
	w := newSender(sess.conn, src, sess.params, cfg.retries, sess.server.stop)
	w.finalBlock = sess.finalBlock
	err := error(nil)
	if sess.params.oack != nil {
		err = w.sendOACK(sess.params.oack)
	}
	if err == nil {
		err = w.run()
	}
	return w.stats, err
}

func (sess *session) hasOption(name string) bool {
	for _, o := range sess.req.options {
		if o.name == name {
			return true
		}
	}
	return false
}
