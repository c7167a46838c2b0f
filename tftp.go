// TFTP wire protocol, request handling and sessions: this file turns datagrams
// on the listening socket into transfers, negotiates RFC 2347/2348/2349/7440
// options and maps every internal failure to a TFTP ERROR in one place.
package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
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

// transferConn is a session's view of the network: a datagram path to one
// peer. recv returns only the peer's datagrams; what other addresses send is
// answered with ERROR 5 by the implementation.
type transferConn interface {
	send(b []byte) error
	// sendBatch sends b as datagrams of segSize bytes, the last one
	// possibly shorter, in as few system calls as it can.
	sendBatch(b []byte, segSize int) error
	recv(b []byte, deadline time.Time) (int, error)
	localAddr() netip.AddrPort
	close() error
}

// socketConn is a transfer's own UDP socket on a fresh port.
type socketConn struct {
	conn     *net.UDPConn
	peer     netip.AddrPort
	transfer *activeTransfer
	scratch  []byte
	batch    *batchSender
	// armed is the socket's read deadline, which moves only when a wait
	// must end sooner: every ACK pushes the next deadline later, and
	// moving a socket's deadline costs the runtime's timer work each time.
	armed time.Time
}

func (c *socketConn) send(b []byte) error {
	_, err := c.conn.WriteToUDPAddrPort(b, c.peer)
	return err
}

func (c *socketConn) sendBatch(b []byte, segSize int) error { return c.batch.send(b, segSize) }

// recv waits for the peer's next datagram until deadline, or until the
// transfer is ended (superseded or shut down): ending it moves the socket's
// deadline into the past, which wakes a read that is blocked.
func (c *socketConn) recv(b []byte, deadline time.Time) (int, error) {
	if c.armed.IsZero() || deadline.Before(c.armed) {
		if err := c.arm(deadline); err != nil {
			return 0, err
		}
	}
	for {
		if err := c.transfer.endReason(); err != nil {
			return 0, err
		}
		n, from, err := c.conn.ReadFromUDPAddrPort(b)
		if err != nil {
			if isRefused(err) {
				// An ICMP error from an earlier send; the peer may still answer.
				continue
			}
			if why := c.transfer.endReason(); why != nil {
				return 0, why
			}
			if isTimeout(err) && time.Now().Before(deadline) {
				// An earlier wait's deadline: this one's is later.
				if err := c.arm(deadline); err != nil {
					return 0, err
				}
				continue
			}
			return 0, err
		}
		if unmap(from) == c.peer {
			c.transfer.answered.Store(true)
			return n, nil
		}
		c.scratch = appendError(c.scratch[:0], errUnknownTID)
		_, _ = c.conn.WriteToUDPAddrPort(c.scratch, from)
	}
}

func (c *socketConn) arm(deadline time.Time) error {
	c.armed = deadline
	return c.conn.SetReadDeadline(deadline)
}

func (c *socketConn) localAddr() netip.AddrPort {
	return c.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

func (c *socketConn) close() error { return c.conn.Close() }

// sharedConn is a transfer in --single-port mode: it answers from the
// listening socket, from the address the request was sent to, and the
// listener hands it the client's datagrams through the transfer's inbox.
type sharedConn struct {
	srv      *server
	peer     netip.AddrPort
	local    netip.Addr // the address the request was sent to
	oob      []byte     // IP_PKTINFO / IPV6_PKTINFO making it the source address
	transfer *activeTransfer
	timer    *time.Timer
	batch    *batchSender
}

func (c *sharedConn) send(b []byte) error {
	_, _, err := c.srv.conn.WriteMsgUDPAddrPort(b, c.oob, c.peer)
	return err
}

func (c *sharedConn) sendBatch(b []byte, segSize int) error { return c.batch.send(b, segSize) }

func (c *sharedConn) recv(b []byte, deadline time.Time) (int, error) {
	c.timer.Reset(time.Until(deadline))
	defer c.timer.Stop()
	select {
	case pkt := <-c.transfer.inbox:
		n := copy(b, pkt)
		c.transfer.free <- pkt[:cap(pkt)]
		return n, nil
	case <-c.timer.C:
		return 0, os.ErrDeadlineExceeded
	case <-c.transfer.ended:
		return 0, c.transfer.why
	}
}

func (c *sharedConn) localAddr() netip.AddrPort {
	listener := c.srv.conn.LocalAddr().(*net.UDPAddr).AddrPort()
	if !c.local.IsValid() {
		return listener
	}
	return netip.AddrPortFrom(c.local, listener.Port())
}

func (c *sharedConn) close() error { return nil }

// errSuperseded ends a transfer without a word: the same client port has
// sent a new request, so the client has left this transfer, and anything
// more from it would reach the new one.
var errSuperseded = errors.New("superseded by a new request from the same client port")

// sharedInboxSize is how many of a client's datagrams a single-port transfer
// may have waiting; more are dropped, as a full socket buffer would.
const sharedInboxSize = 8

// activeTransfer is a running transfer as the listener sees it.
type activeTransfer struct {
	file   string
	client netip.AddrPort
	// answered is set once the client sent anything to the transfer: the
	// same request after that is a new transfer, not a retransmission.
	answered atomic.Bool
	// ended is closed, once, when the transfer must stop at once; why
	// (errSuperseded or errShutdown) is set before.
	ended   chan struct{}
	endOnce sync.Once
	why     error
	// socket is the transfer's own socket, once open: ending the transfer
	// wakes a read blocked on it.
	socket atomic.Pointer[net.UDPConn]
	// lingering is set, with the server's lock held, while an upload waits
	// after its final ACK.
	lingering bool
	// inbox and free serve --single-port mode only.
	inbox chan []byte
	free  chan []byte
}

func newActiveTransfer(file string, client netip.AddrPort) *activeTransfer {
	return &activeTransfer{file: file, client: client, ended: make(chan struct{})}
}

// end tells the transfer to stop; why is what its waits then return.
func (t *activeTransfer) end(why error) {
	t.endOnce.Do(func() {
		t.why = why
		close(t.ended)
		if sock := t.socket.Load(); sock != nil {
			_ = sock.SetReadDeadline(time.Unix(1, 0))
		}
	})
}

// endReason is why the transfer was ended, or nil while it runs.
func (t *activeTransfer) endReason() error {
	select {
	case <-t.ended:
		return t.why
	default:
		return nil
	}
}

// deliver hands a datagram to a single-port transfer without blocking the
// listener.
func (t *activeTransfer) deliver(pkt []byte) {
	t.answered.Store(true)
	select {
	case buf := <-t.free:
		buf = buf[:copy(buf, pkt)]
		select {
		case t.inbox <- buf:
		default:
			t.free <- buf
		}
	default:
	}
}

func newSharedTransfer(file string, client netip.AddrPort, maxPacket int) *activeTransfer {
	t := newActiveTransfer(file, client)
	t.inbox = make(chan []byte, sharedInboxSize)
	t.free = make(chan []byte, sharedInboxSize)
	for range sharedInboxSize {
		t.free <- make([]byte, maxPacket)
	}
	return t
}

func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// isTimeout reports a passed read deadline. It runs once per ACK, so it must
// not allocate (errors.As with a net.Error target would).
func isTimeout(err error) bool {
	return err != nil && errors.Is(err, os.ErrDeadlineExceeded)
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// destination is where a request arrived: the local address to answer from
// and the interface it came in on.
type destination struct {
	addr    netip.Addr
	ifindex int
}

// parsePktinfo reads the local address of a request from IP_PKTINFO or
// IPV6_PKTINFO. For IPv4 it prefers ipi_spec_dst, the interface's own address,
// so a request sent to a broadcast address is answered from a unicast one.
func parsePktinfo(oob []byte) destination {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return destination{}
	}
	var d destination
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= unix.SizeofInet4Pktinfo:
			spec := netip.AddrFrom4([4]byte(m.Data[4:8]))
			addr := netip.AddrFrom4([4]byte(m.Data[8:12]))
			if !spec.IsUnspecified() {
				addr = spec
			}
			// IP_PKTINFO is the better source for IPv4: it wins over a
			// v4-mapped IPV6_PKTINFO.
			return destination{addr: addr, ifindex: int(int32(binary.NativeEndian.Uint32(m.Data[0:4])))}
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= unix.SizeofInet6Pktinfo:
			d.addr = netip.AddrFrom16([16]byte(m.Data[0:16])).Unmap()
			d.ifindex = int(binary.NativeEndian.Uint32(m.Data[16:20]))
		}
	}
	return d
}

// enablePktinfo asks the kernel for the destination address of each request.
// On a dual-stack socket both options are set: IPv4 requests then carry
// IP_PKTINFO with ipi_spec_dst.
func enablePktinfo(conn *net.UDPConn) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var v4err, v6err error
	if cerr := raw.Control(func(fd uintptr) {
		v4err = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		v6err = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
	}); cerr != nil {
		return cerr
	}
	if v4err != nil && v6err != nil {
		return fmt.Errorf("IP_PKTINFO: %w", v4err)
	}
	return nil
}

// blksizeCap is the largest block that fits the interface MTU without IP
// fragmentation: MTU minus IP, UDP and TFTP headers.
func blksizeCap(ifindex int, v6 bool) int {
	mtu := 1500
	if ifindex > 0 {
		if ifi, err := net.InterfaceByIndex(ifindex); err == nil && ifi.MTU > 0 {
			mtu = ifi.MTU
		}
	}
	overhead := 20 + 8 + 4
	if v6 {
		overhead = 40 + 8 + 4
	}
	return max(defaultBlksize, min(maxBlksize, mtu-overhead))
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
	// completed is when the final ACK of an upload went out: the receiver
	// lingers after it, and that time is no part of the transfer's rate.
	completed time.Time
}

// server owns the listening socket and the running sessions.
type server struct {
	cfg  *config
	log  *slog.Logger
	conn *net.UDPConn

	mu sync.Mutex
	// active is the newest transfer of each client address and port: the
	// one a --single-port datagram goes to, and the one a new request from
	// that port replaces.
	active map[netip.AddrPort]*activeTransfer
	// running is every transfer whose session has not ended, replaced or
	// not: --max-connections counts these. perClient counts them by client
	// address, for --max-per-client.
	running   map[*activeTransfer]struct{}
	perClient map[netip.Addr]int
	closing   bool
	sessions  sync.WaitGroup
	stop      chan struct{} // closed when running sessions must end

	// noise logs bad requests and refusals without flooding the log.
	noise *noiseLog
	// listenerBatch is how the listening socket sends batches
	// (--single-port).
	listenerBatch socketBatchMode

	resolver *resolver
	cache    *cache
	remap    atomic.Pointer[remapRules] // nil without --map-file; SIGHUP replaces it
	uploads  uploadTable                // names being written into --upload-dir

	// onDone, when set, receives the report of each finished transfer.
	onDone func(transferReport)
}

func newServer(cfg *config, conn *net.UDPConn, log *slog.Logger) (*server, error) {
	if err := enablePktinfo(conn); err != nil {
		return nil, err
	}
	s := &server{
		cfg:       cfg,
		log:       log,
		conn:      conn,
		active:    map[netip.AddrPort]*activeTransfer{},
		running:   map[*activeTransfer]struct{}{},
		perClient: map[netip.Addr]int{},
		stop:      make(chan struct{}),
		noise:     newNoiseLog(log, noiseInterval),
		resolver:  &resolver{root: cfg.root, fallback: cfg.fallback, disableProxy: cfg.disableProxy, log: log},
		cache:     newCache(cfg.cacheDir, cfg.cacheMaxSize, log),
	}
	s.remap.Store(cfg.mapRules)
	go s.cache.run()
	return s, nil
}

// open finds what a request names: a local file or a proxied URL.
func (s *server) open(name string) (source, error) {
	res, err := s.resolver.resolve(name)
	if err != nil {
		return nil, err
	}
	if res.remote != nil {
		s.log.Debug("proxying", "file", logText(name), "url", res.remote.shown())
		return s.cache.open(res.remote, s.stop)
	}
	return openLocal(res.local)
}

// serve reads requests until the listening socket is closed.
func (s *server) serve() error {
	buf := make([]byte, maxRequest)
	oob := make([]byte, 512)
	for {
		n, oobn, _, from, err := s.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if isRefused(err) || isTimeout(err) {
				continue
			}
			s.log.Warn("receive failed", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.handle(buf[:n], unmap(from), parsePktinfo(oob[:oobn]))
	}
}

// reply answers a datagram from the listening socket, from the address the
// datagram was sent to.
func (s *server) reply(to netip.AddrPort, dst destination, we *wireError) {
	if _, _, err := s.conn.WriteMsgUDPAddrPort(appendError(nil, we), pktinfoFor(dst), to); err != nil {
		s.log.Debug("error reply failed", "client", to, "err", err)
	}
}

// pktinfoFor builds the control message that makes a datagram sent from the
// listening socket leave from the address a request was sent to.
func pktinfoFor(dst destination) []byte {
	switch {
	case dst.addr.Is4():
		return unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: dst.addr.As4()})
	case dst.addr.Is6() && !dst.addr.IsMulticast():
		return unix.PktInfo6(&unix.Inet6Pktinfo{Addr: dst.addr.As16(), Ifindex: uint32(dst.ifindex)})
	}
	return nil
}

func (s *server) handle(pkt []byte, from netip.AddrPort, dst destination) {
	isRequest := len(pkt) >= 2 && pkt[0] == 0 && (pkt[1] == opRRQ || pkt[1] == opWRQ)
	if s.cfg.singlePort && !isRequest {
		s.mu.Lock()
		t := s.active[from]
		s.mu.Unlock()
		if t != nil {
			t.deliver(pkt)
			return
		}
	}
	if len(pkt) >= 2 {
		switch op := uint16(pkt[0])<<8 | uint16(pkt[1]); op {
		case opERROR:
			// An ERROR is never answered (RFC 1350), or two peers could
			// bounce errors at each other forever.
			s.log.Debug("stray ERROR on the listening port", "client", from)
			return
		case opDATA, opACK, opOACK:
			s.log.Debug("stray packet on the listening port", "client", from, "opcode", op)
			s.reply(from, dst, errUnknownTID)
			return
		}
	}
	req, err := parseRequest(pkt)
	if err != nil {
		s.noise.note(from, "bad request", "err", err)
		s.reply(from, dst, toWireError(err))
		return
	}
	s.mu.Lock()
	old := s.active[from]
	if old != nil && old.file == req.filename && !old.answered.Load() && old.endReason() == nil {
		s.mu.Unlock()
		s.log.Debug("retransmitted request ignored", "client", from, "file", logText(req.filename))
		return
	}
	if old != nil {
		// A client's port is its transfer ID: a new request from it means
		// it has left the old transfer. That one ends now, and keeps its
		// place in the count until its session is gone.
		old.end(errSuperseded)
		delete(s.active, from)
	}
	if refusal := s.admit(from.Addr()); refusal != nil {
		s.mu.Unlock()
		s.noise.note(from, "request refused", "file", logText(req.filename), "err", refusal)
		s.reply(from, dst, refusal)
		return
	}
	t := newActiveTransfer(req.filename, from)
	if s.cfg.singlePort {
		maxPacket := 1024 // a reader's client sends ACKs and ERRORs
		if req.op == opWRQ {
			maxPacket = 4 + maxBlksize + 1
		}
		t = newSharedTransfer(req.filename, from, maxPacket)
	}
	s.active[from] = t
	s.running[t] = struct{}{}
	s.perClient[from.Addr()]++
	s.sessions.Add(1)
	s.mu.Unlock()

	go func() {
		defer s.sessions.Done()
		s.runSession(req, from, dst, t)
	}()
}

// admit decides, with s.mu held, whether a request from client may start a
// transfer: nil, or the error it is refused with.
func (s *server) admit(client netip.Addr) *wireError {
	switch {
	case s.closing:
		return errShutdown
	case len(s.running) >= s.cfg.maxConnections:
		return errBusy
	case s.cfg.maxPerClient > 0 && s.perClient[client] >= s.cfg.maxPerClient:
		return errBusy
	}
	return nil
}

// release frees a transfer's connection slot. It comes before the transfer
// is reported, so the same client may ask for the same file again at once.
// A newer transfer of the same client port keeps its place.
func (s *server) release(t *activeTransfer) {
	s.mu.Lock()
	if s.active[t.client] == t {
		delete(s.active, t.client)
	}
	delete(s.running, t)
	if n := s.perClient[t.client.Addr()] - 1; n > 0 {
		s.perClient[t.client.Addr()] = n
	} else {
		delete(s.perClient, t.client.Addr())
	}
	s.mu.Unlock()
}

// openTransferConn makes the socket a transfer answers from: a fresh port on
// the local address the request was sent to.
func (s *server) openTransferConn(peer netip.AddrPort, dst destination, t *activeTransfer) (transferConn, error) {
	if s.cfg.singlePort {
		oob := pktinfoFor(dst)
		return &sharedConn{srv: s, peer: peer, local: dst.addr, oob: oob, transfer: t, timer: time.NewTimer(time.Hour),
			batch: newBatchSender(s.conn, peer, oob, &s.listenerBatch, s.log)}, nil
	}
	local := dst.addr
	network := "udp6"
	if peer.Addr().Is4() {
		network = "udp4"
		if !local.Is4() {
			local = netip.IPv4Unspecified()
		}
	} else if !local.Is6() {
		local = netip.IPv6Unspecified()
	}
	if local.Is6() && (local.IsLinkLocalUnicast() || local.IsLinkLocalMulticast()) && dst.ifindex > 0 {
		local = local.WithZone(strconv.Itoa(dst.ifindex))
	}
	if local.IsMulticast() {
		local = netip.IPv6Unspecified()
		if peer.Addr().Is4() {
			local = netip.IPv4Unspecified()
		}
	}
	conn, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
	if err != nil {
		return nil, err
	}
	t.socket.Store(conn)
	return &socketConn{conn: conn, peer: peer, transfer: t, batch: newBatchSender(conn, peer, nil, &socketBatchMode{}, s.log)}, nil
}

// runSession serves one request to its end and logs one line about it.
func (s *server) runSession(req *request, peer netip.AddrPort, dst destination, t *activeTransfer) {
	start := time.Now()
	log := s.log.With("client", peer.String(), "file", logText(req.filename))
	conn, err := s.openTransferConn(peer, dst, t)
	if err != nil {
		log.Warn("cannot open transfer socket", "err", err)
		s.reply(peer, dst, &wireError{codeUndefined, "cannot open transfer socket"})
		s.release(t)
		return
	}
	log = log.With("local", conn.localAddr().String())

	sess := &session{
		server: s,
		conn:   conn,
		req:    req,
		log:    log,
		dst:    dst,
		peer:   peer,
		params: transferParams{blksize: defaultBlksize, windowsize: 1},
	}
	stats, err := sess.run()
	if sess.linger == nil {
		conn.close()
		s.release(t)
	}
	end := time.Now()
	if !stats.completed.IsZero() {
		end = stats.completed
	}
	elapsed := end.Sub(start)
	rate := float64(stats.bytes) / max(elapsed.Seconds(), 1e-9)
	attrs := []any{
		"op", map[uint16]string{opRRQ: "read", opWRQ: "write"}[req.op],
		"blksize", sess.params.blksize, "windowsize", sess.params.windowsize,
		"bytes", stats.bytes, "duration", elapsed.Round(time.Microsecond),
		"rate_MBps", strconv.FormatFloat(rate/1e6, 'f', 2, 64),
		"retransmits", stats.retransmits, "timeouts", stats.timeouts,
		"rtt", stats.rtt.Round(time.Microsecond),
	}
	if sess.name != req.filename {
		attrs = append(attrs, "mapped", logText(sess.name))
	}
	if sess.upload != nil {
		attrs = append(append(attrs, "tsize", requestTsize(req)), sess.upload.summary()...)
	}
	switch {
	case err == nil:
		log.Info("transfer complete", attrs...)
	case errors.Is(err, errClientAbort):
		log.Info("transfer ended by the client", attrs...)
	case errors.Is(err, errSuperseded):
		log.Info("transfer left for a new request from the same client port", attrs...)
	default:
		log.Info("transfer failed", append(attrs, "err", logText(err.Error()))...)
	}
	if s.onDone != nil {
		s.onDone(transferReport{req.filename, sess.name, sess.params.blksize, sess.params.windowsize, stats, err})
	}
	if sess.linger != nil {
		if s.startLinger(t) {
			sess.linger()
		}
		conn.close()
		s.release(t)
	}
}

// startLinger marks an upload that waits after its final ACK, unless the
// server is closing: a shutdown ends such waits at once rather than after
// the grace.
func (s *server) startLinger(t *activeTransfer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	t.lingering = true
	return true
}

// shutdown stops taking requests and waits up to grace for running
// transfers, then ends the rest: every wait of theirs returns at once, so
// they are gone within shutdownStraggle.
func (s *server) shutdown(grace time.Duration) {
	s.mu.Lock()
	s.closing = true
	for t := range s.running {
		if t.lingering {
			t.end(errShutdown)
		}
	}
	s.mu.Unlock()
	if !s.cfg.singlePort {
		// Transfers have sockets of their own: the listener can go at once.
		s.conn.Close()
	}
	done := make(chan struct{})
	go func() { s.sessions.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		close(s.stop)
		s.mu.Lock()
		for t := range s.running {
			t.end(errShutdown)
		}
		s.mu.Unlock()
		s.cache.close() // ends downloads and requests still waiting on an origin
		select {
		case <-done:
		case <-time.After(shutdownStraggle):
			s.log.Warn("transfers still running after shutdown", "count", s.runningCount())
		}
	}
	s.conn.Close()
	s.cache.close()
	s.noise.flush()
}

// shutdownStraggle bounds the wait for transfers after they were told to end.
const shutdownStraggle = time.Second

func (s *server) runningCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.running)
}

// noiseInterval is how often the log may tell of bad requests and refusals.
const noiseInterval = 10 * time.Second

// noiseLog keeps what broken or hostile clients provoke (malformed requests,
// refusals) from flooding a small log: the first such event of an interval
// is logged at info, the rest of the interval at debug only, and at its end
// one info line counts them.
type noiseLog struct {
	log      *slog.Logger
	interval time.Duration

	mu         sync.Mutex
	open       bool // an interval is running
	suppressed int
	addrs      map[netip.Addr]struct{} // the suppressed events' clients
	timer      *time.Timer
}

// maxNoiseAddrs bounds the addresses a summary counts, and so its memory.
const maxNoiseAddrs = 4096

func newNoiseLog(log *slog.Logger, interval time.Duration) *noiseLog {
	return &noiseLog{log: log, interval: interval, addrs: map[netip.Addr]struct{}{}}
}

// note logs one event about client.
func (n *noiseLog) note(client netip.AddrPort, msg string, attrs ...any) {
	attrs = append([]any{"client", client}, attrs...)
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.open {
		n.open = true
		n.timer = time.AfterFunc(n.interval, n.flush)
		n.log.Info(msg, attrs...)
		return
	}
	n.suppressed++
	if len(n.addrs) < maxNoiseAddrs {
		n.addrs[client.Addr()] = struct{}{}
	}
	n.log.Debug(msg, attrs...)
}

// flush ends the interval with the count of what it kept from the log.
func (n *noiseLog) flush() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.timer != nil {
		n.timer.Stop()
	}
	if n.suppressed > 0 {
		n.log.Info("bad requests and refusals suppressed", "count", n.suppressed, "addresses", len(n.addrs),
			"interval", n.interval)
	}
	n.open, n.suppressed = false, 0
	clear(n.addrs)
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

// session is one transfer.
type session struct {
	server *server
	conn   transferConn
	req    *request
	log    *slog.Logger
	dst    destination
	peer   netip.AddrPort
	params transferParams
	name   string     // what is served: the requested name after --map-file
	upload uploadSink // where a WRQ's body goes
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
		stats, err := r.run()
		if err == nil {
			sess.linger = r.linger
		}
		return stats, err
	}
	w := newSender(sess.conn, src, sess.params, cfg.retries, sess.server.stop)
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

// netasciiSource converts what it serves to netascii on the fly (LF becomes
// CR LF, CR becomes CR NUL). Conversion moves offsets, so it remembers where
// recently read blocks ended in both streams; a resend starts from the
// nearest such mark, or from the beginning when the mark has been dropped.
type netasciiSource struct {
	source
	marks []netasciiMark
	raw   []byte
	size  int64 // converted size, computed on first use; -2 until then
}

type netasciiMark struct {
	out, in    int64 // offsets in the converted and in the raw stream
	pending    byte  // second byte of a pair not yet emitted
	hasPending bool
}

// netasciiMarks bounds the remembered positions; a window resend rarely
// reaches further back.
const netasciiMarks = 256

func newNetascii(src source) *netasciiSource {
	return &netasciiSource{source: src, raw: make([]byte, 4096), size: -2}
}

func (s *netasciiSource) markAtOrBefore(off int64) netasciiMark {
	best := netasciiMark{}
	for _, m := range s.marks {
		if m.out <= off && m.out > best.out {
			best = m
		}
	}
	return best
}

func (s *netasciiSource) ReadAt(p []byte, off int64) (int, error) {
	m := s.markAtOrBefore(off)
	out, in := m.out, m.in
	pending, hasPending := m.pending, m.hasPending
	n, rawPos, rawLen := 0, 0, 0
	for n < len(p) {
		var c byte
		if hasPending {
			c, hasPending = pending, false
		} else {
			if rawPos == rawLen {
				got, err := s.source.ReadAt(s.raw, in)
				if got == 0 {
					if err == nil {
						err = io.ErrNoProgress
					}
					return n, err
				}
				rawPos, rawLen = 0, got
			}
			c = s.raw[rawPos]
			rawPos++
			in++
			switch c {
			case '\n':
				c, pending, hasPending = '\r', '\n', true
			case '\r':
				pending, hasPending = 0, true
			}
		}
		if out >= off {
			p[n] = c
			n++
		}
		out++
	}
	if len(s.marks) >= netasciiMarks {
		s.marks = s.marks[1:]
	}
	s.marks = append(s.marks, netasciiMark{out: out, in: in, pending: pending, hasPending: hasPending})
	return n, nil
}

// Size is the converted size: the raw size plus one byte per CR and LF.
func (s *netasciiSource) Size() int64 {
	if s.size != -2 {
		return s.size
	}
	s.size = -1
	raw := s.source.Size()
	if raw < 0 {
		return -1
	}
	extra := int64(0)
	for off := int64(0); ; {
		n, err := s.source.ReadAt(s.raw, off)
		extra += int64(bytes.Count(s.raw[:n], []byte{'\n'}) + bytes.Count(s.raw[:n], []byte{'\r'}))
		off += int64(n)
		if err != nil || n == 0 {
			break
		}
	}
	s.size = raw + extra
	return s.size
}

// netasciiDecoder turns a netascii upload back into local text (CR LF
// becomes LF, CR NUL becomes CR). A CR at the end of a block waits for the
// first byte of the next one. A CR before any other byte is kept as it is.
type netasciiDecoder struct {
	pendingCR bool
}

// decode converts src into dst, which needs room for len(src)+1 bytes, and
// returns the converted bytes.
func (d *netasciiDecoder) decode(dst, src []byte) []byte {
	dst = dst[:0]
	for _, c := range src {
		if d.pendingCR {
			d.pendingCR = false
			switch c {
			case '\n':
				dst = append(dst, '\n')
				continue
			case 0:
				dst = append(dst, '\r')
				continue
			}
			dst = append(dst, '\r')
		}
		if c == '\r' {
			d.pendingCR = true
			continue
		}
		dst = append(dst, c)
	}
	return dst
}

// finish returns what is still held at the end of the upload: a final CR.
func (d *netasciiDecoder) finish(dst []byte) []byte {
	dst = dst[:0]
	if d.pendingCR {
		d.pendingCR = false
		dst = append(dst, '\r')
	}
	return dst
}
