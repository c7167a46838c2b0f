// The listener: it reads requests on the listening socket, admits them
// within the connection limits, runs a session for each, answers strays,
// keeps a hostile client from flooding the log, and drains on shutdown.
package main

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

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
	// firstBatchMode is how a new socket sends batches: UDP GSO unless the
	// probe at startup found it refused or mistranslated. listenerBatch is
	// the listening socket's mode (--single-port).
	firstBatchMode batchMode
	listenerBatch  *socketBatchMode

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
	if err := probeGSO(); err != nil {
		s.firstBatchMode = batchMmsg
		log.Debug("UDP GSO unusable, batches go by sendmmsg", "err", err)
	}
	s.listenerBatch = newSocketBatchMode(s.firstBatchMode)
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
	if old != nil && old.file == req.filename && !old.finalBlock.Load() && old.endReason() == nil {
		// The client's own retry, or a copy of its request that the
		// network delayed past the start of the transfer: the transfer
		// runs on. Once the final block has gone out (or come in), the
		// same request is the client fetching the file again.
		s.mu.Unlock()
		s.log.Debug("retransmitted request ignored", "client", from, "file", logText(req.filename))
		return
	}
	if old != nil {
		// A client's port is its transfer ID: another request from it
		// means it has left the old transfer. That one ends now, and keeps
		// its place in the count until its session is gone.
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
			batch: newBatchSender(s.conn, peer, oob, s.listenerBatch, s.log)}, nil
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
	return &socketConn{conn: conn, peer: peer, transfer: t, batch: newBatchSender(conn, peer, nil, newSocketBatchMode(s.firstBatchMode), s.log)}, nil
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
		server:     s,
		conn:       conn,
		finalBlock: &t.finalBlock,
		req:        req,
		log:        log,
		dst:        dst,
		peer:       peer,
		params:     transferParams{blksize: defaultBlksize, windowsize: 1},
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

// activeTransfer is a running transfer as the listener sees it.
type activeTransfer struct {
	file   string
	client netip.AddrPort
	// finalBlock is set once the final block went out (a read) or came in
	// (a write): the same request after that is a new transfer.
	finalBlock atomic.Bool
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
