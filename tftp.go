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
	// windowAware is set when the client negotiated windowsize (RFC 7440,
	// any value): such a client checks block numbers and reports a block
	// ahead of the one it expects instead of storing it.
	windowAware bool
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
		p.windowAware = true
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
}

func (c *socketConn) send(b []byte) error {
	_, err := c.conn.WriteToUDPAddrPort(b, c.peer)
	return err
}

func (c *socketConn) recv(b []byte, deadline time.Time) (int, error) {
	if err := c.conn.SetReadDeadline(deadline); err != nil {
		return 0, err
	}
	for {
		n, from, err := c.conn.ReadFromUDPAddrPort(b)
		if err != nil {
			if isRefused(err) {
				// An ICMP error from an earlier send; the peer may still answer.
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
}

func (c *sharedConn) send(b []byte) error {
	_, _, err := c.srv.conn.WriteMsgUDPAddrPort(b, c.oob, c.peer)
	return err
}

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
	case <-c.transfer.superseded:
		return 0, errSuperseded
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

// errSuperseded ends a single-port transfer without a word: the same client
// port has started a new transfer, and anything more from the old one would
// reach the new one.
var errSuperseded = errors.New("superseded by a new request from the same client port")

// sharedInboxSize is how many of a client's datagrams a single-port transfer
// may have waiting; more are dropped, as a full socket buffer would.
const sharedInboxSize = 8

// activeTransfer is a running transfer as the listener sees it.
type activeTransfer struct {
	file string
	// answered is set once the client sent anything to the transfer: the
	// same request after that is a new transfer, not a retransmission.
	answered atomic.Bool
	// inbox, free and superseded serve --single-port mode only.
	inbox      chan []byte
	free       chan []byte
	superseded chan struct{}
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

func newSharedTransfer(file string, maxPacket int) *activeTransfer {
	t := &activeTransfer{
		file:       file,
		inbox:      make(chan []byte, sharedInboxSize),
		free:       make(chan []byte, sharedInboxSize),
		superseded: make(chan struct{}),
	}
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

	mu       sync.Mutex
	active   map[netip.AddrPort]*activeTransfer // by client address
	closing  bool
	sessions sync.WaitGroup
	stop     chan struct{} // closed when running sessions must end

	resolver *resolver
	cache    *cache
	uploads  uploadTable // names being written into --upload-dir

	// onDone, when set, receives the report of each finished transfer.
	onDone func(transferReport)
}

func newServer(cfg *config, conn *net.UDPConn, log *slog.Logger) (*server, error) {
	if err := enablePktinfo(conn); err != nil {
		return nil, err
	}
	s := &server{
		cfg:      cfg,
		log:      log,
		conn:     conn,
		active:   map[netip.AddrPort]*activeTransfer{},
		stop:     make(chan struct{}),
		resolver: &resolver{root: cfg.root, fallback: cfg.fallback, disableProxy: cfg.disableProxy, log: log},
		cache:    newCache(cfg.cacheDir, cfg.cacheMaxSize, log),
	}
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
		s.log.Debug("proxying", "file", name, "url", res.remote.url.Redacted())
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
		s.log.Info("bad request", "client", from, "err", err)
		s.reply(from, dst, toWireError(err))
		return
	}
	s.mu.Lock()
	old := s.active[from]
	if old != nil && old.file == req.filename && !old.answered.Load() {
		s.mu.Unlock()
		s.log.Debug("retransmitted request ignored", "client", from, "file", req.filename)
		return
	}
	if s.closing {
		s.mu.Unlock()
		s.reply(from, dst, errShutdown)
		return
	}
	if len(s.active) >= s.cfg.maxConnections {
		s.mu.Unlock()
		s.log.Warn("too many transfers, request refused", "client", from, "file", req.filename)
		s.reply(from, dst, errBusy)
		return
	}
	t := &activeTransfer{file: req.filename}
	if s.cfg.singlePort {
		maxPacket := 1024 // a reader's client sends ACKs and ERRORs
		if req.op == opWRQ {
			maxPacket = 4 + maxBlksize + 1
		}
		t = newSharedTransfer(req.filename, maxPacket)
		if old != nil && old.superseded != nil {
			close(old.superseded)
		}
	}
	s.active[from] = t
	s.sessions.Add(1)
	s.mu.Unlock()

	go func() {
		defer s.sessions.Done()
		s.runSession(req, from, dst, t)
	}()
}

// release frees a client's connection slot. It comes before the transfer is
// reported, so the same client may ask for the same file again at once. A
// newer transfer of the same client keeps its place.
func (s *server) release(client netip.AddrPort, t *activeTransfer) {
	s.mu.Lock()
	if s.active[client] == t {
		delete(s.active, client)
	}
	s.mu.Unlock()
}

// openTransferConn makes the socket a transfer answers from: a fresh port on
// the local address the request was sent to.
func (s *server) openTransferConn(peer netip.AddrPort, dst destination, t *activeTransfer) (transferConn, error) {
	if s.cfg.singlePort {
		return &sharedConn{srv: s, peer: peer, local: dst.addr, oob: pktinfoFor(dst), transfer: t, timer: time.NewTimer(time.Hour)}, nil
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
	return &socketConn{conn: conn, peer: peer, transfer: t}, nil
}

// runSession serves one request to its end and logs one line about it.
func (s *server) runSession(req *request, peer netip.AddrPort, dst destination, t *activeTransfer) {
	start := time.Now()
	log := s.log.With("client", peer.String(), "file", req.filename)
	conn, err := s.openTransferConn(peer, dst, t)
	if err != nil {
		log.Warn("cannot open transfer socket", "err", err)
		s.reply(peer, dst, &wireError{codeUndefined, "cannot open transfer socket"})
		s.release(peer, t)
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
		s.release(peer, t)
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
	if sess.upload != nil {
		attrs = append(append(attrs, "tsize", requestTsize(req)), sess.upload.summary()...)
	}
	switch {
	case err == nil:
		log.Info("transfer complete", attrs...)
	case errors.Is(err, errClientAbort):
		log.Info("transfer ended by the client", attrs...)
	default:
		log.Info("transfer failed", append(attrs, "err", err)...)
	}
	if s.onDone != nil {
		s.onDone(transferReport{req.filename, sess.params.blksize, sess.params.windowsize, stats, err})
	}
	if sess.linger != nil {
		sess.linger()
		conn.close()
		s.release(peer, t)
	}
}

// ending reports whether running sessions should end: the server is
// shutting down.
func (s *server) ending() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing || stopped(s.stop)
}

// shutdown stops taking requests and waits up to grace for running
// transfers, then tells the rest to end.
func (s *server) shutdown(grace time.Duration) {
	s.mu.Lock()
	s.closing = true
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
		<-done
	}
	s.conn.Close()
	s.cache.close()
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
	if sess.req.op == opWRQ {
		sink, err := sess.server.openUpload(sess.req)
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
		src, err = sess.server.open(sess.req.filename)
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
			sess.linger = func() { r.linger(sess.server.ending) }
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
