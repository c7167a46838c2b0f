// The listener: it reads requests on the listening sockets, answers strays
// and malformed requests, refuses the clients --allow, --deny and
// --upload-allow keep out, admits requests within the connection limits,
// lets a new request from a client port supersede the transfer running
// there, starts a session for each admitted one (session.go), releases its
// slot when the session ends, keeps a hostile client from flooding the
// log, lists the running transfers (SIGUSR1), and drains on shutdown.
package main

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"
)

// server owns the listening sockets and the running transfers.
type server struct {
	cfg *config
	log *slog.Logger
	// listeners are the sockets of --listen (or systemd's); each request
	// is answered from the one it came in on.
	listeners []*listeningSocket
	// env is what every session is given; rules and cache are also the
	// signals' (SIGHUP rereads the rules, SIGUSR1 and SIGUSR2 the cache).
	env   *sessionEnv
	rules *remapTable
	cache *cache
	// metrics counts what the server does; hooks runs --hook, or is nil.
	metrics *metrics
	hooks   *hookRunner

	mu sync.Mutex
	// active is the newest transfer of each client address and port: the
	// one a --single-port datagram goes to, and the one a new request from
	// that port replaces.
	active map[netip.AddrPort]*transfer
	// running is every transfer whose session has not ended, replaced or
	// not: --max-connections counts these. perClient counts them by client
	// address, for --max-per-client.
	running   map[*transfer]struct{}
	perClient map[netip.Addr]int
	closing   bool
	sessions  sync.WaitGroup

	// noise logs bad requests and refusals without flooding the log.
	noise *noiseLog
}

func newServer(cfg *config, conns []*net.UDPConn, log *slog.Logger) (*server, error) {
	build := "proxy"
	if !proxySupport {
		build = "noproxy"
	}
	m := newMetrics(version, build, proxySupport)
	s := &server{
		cfg:       cfg,
		log:       log,
		rules:     newRemapTable(cfg.mapFile, cfg.mapSteps, cfg.mapRules, log),
		cache:     newCache(cfg.cacheDir, cfg.cacheMaxSize, log, m),
		metrics:   m,
		active:    map[netip.AddrPort]*transfer{},
		running:   map[*transfer]struct{}{},
		perClient: map[netip.Addr]int{},
		noise:     newNoiseLog(log, noiseInterval),
	}
	firstBatchMode := batchGSO
	if err := probeGSO(); err != nil {
		firstBatchMode = batchMmsg
		log.Debug("UDP GSO unusable, batches go by sendmmsg", "err", err)
	}
	for _, conn := range conns {
		if err := enablePktinfo(conn); err != nil {
			return nil, err
		}
		s.listeners = append(s.listeners, &listeningSocket{conn: conn, batch: newSocketBatchMode(firstBatchMode)})
	}
	s.env = &sessionEnv{
		cfg:            cfg,
		log:            log,
		rules:          s.rules,
		resolver:       newResolver(cfg, log),
		cache:          s.cache,
		uploads:        &uploadTable{},
		firstBatchMode: firstBatchMode,
		release:        s.release,
		metrics:        m,
		totalRate:      newRatePacer(cfg.maxTotalRate),
	}
	if cfg.hook != nil {
		s.hooks = newHookRunner(cfg.hook, cfg.hookMax, cfg.hookTimeout, log, m)
		s.env.hooks = s.hooks
	}
	go s.cache.run()
	return s, nil
}

// serve reads requests on every listening socket until they are closed.
func (s *server) serve() {
	var wg sync.WaitGroup
	for _, l := range s.listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveSocket(l)
		}()
	}
	wg.Wait()
}

// serveSocket reads requests on one listening socket until it is closed.
func (s *server) serveSocket(l *listeningSocket) {
	buf := make([]byte, maxRequest)
	oob := make([]byte, 512)
	for {
		n, oobn, _, from, err := l.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if isRefused(err) || isTimeout(err) {
				continue
			}
			s.log.Warn("receive failed", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.handle(l, buf[:n], unmap(from), parsePktinfo(oob[:oobn]))
	}
}

// reply answers a datagram from the listening socket it came in on.
func (s *server) reply(l *listeningSocket, to netip.AddrPort, dst destination, we *wireError) {
	if err := replyFrom(l.conn, to, dst, we); err != nil {
		s.log.Debug("error reply failed", "client", to, "err", err)
	}
}

// handle dispatches one datagram of listening socket l.
func (s *server) handle(l *listeningSocket, pkt []byte, from netip.AddrPort, dst destination) {
	op := packetOp(pkt)
	if s.cfg.singlePort && op != opRRQ && op != opWRQ {
		s.mu.Lock()
		t := s.active[from]
		s.mu.Unlock()
		if t != nil && t.listener == l {
			t.inbox.deliver(pkt)
			return
		}
	}
	switch op {
	case opERROR:
		// An ERROR is never answered (RFC 1350), or two peers could
		// bounce errors at each other forever.
		s.log.Debug("stray ERROR on the listening port", "client", from)
		return
	case opDATA, opACK, opOACK:
		s.log.Debug("stray packet on the listening port", "client", from, "opcode", op)
		s.reply(l, from, dst, errUnknownTID)
		return
	}
	req, err := parseRequest(pkt)
	if err != nil {
		s.metrics.refusedRequest(nil, 0, refusedMalformed)
		s.noise.note(from, "bad request", "err", err)
		s.reply(l, from, dst, toWireError(err))
		return
	}
	req.dropOptions(s.cfg.refuse)
	// Access is decided first: a refused client's request supersedes
	// nothing, takes no slot, and is neither mapped nor opened.
	var t, repeated *transfer
	refusal := errAccess
	if s.cfg.access.permits(from.Addr(), req.op) {
		t, repeated, refusal = s.start(req, from, dst, l)
	}
	switch {
	case refusal != nil:
		s.metrics.refusedRequest(nil, req.op, refusalReason(refusal))
		s.noise.note(from, "request refused", "file", logText(req.filename), "err", refusal)
		s.reply(l, from, dst, refusal)
	case repeated != nil && repeated.progress.first.repeat(time.Now()):
		s.log.Debug("first reply resent for a retransmitted request", "client", from, "file", logText(req.filename))
	case repeated != nil:
		s.log.Debug("retransmitted request ignored", "client", from, "file", logText(req.filename))
	default:
		go func() {
			defer s.sessions.Done()
			runSession(s.env, t)
		}()
	}
}

// start admits a request and records its transfer. A repeat of the request
// that started the client port's running transfer starts nothing: start
// returns that transfer as repeated. Any other request supersedes that
// transfer; a request beyond the limits is refused.
func (s *server) start(req *request, from netip.AddrPort, dst destination, l *listeningSocket) (t, repeated *transfer, refusal *wireError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.active[from]
	if old != nil && old.req.filename == req.filename && !old.progress.finalBlock.Load() && old.end.reason() == nil {
		// The client's own retry, or a copy of its request that the
		// network delayed past the start of the transfer: the transfer
		// runs on. Once the final block has gone out (or come in), the
		// same request is the client fetching the file again.
		return nil, old, nil
	}
	if old != nil {
		// A client's port is its transfer ID: another request from it
		// means it has left the old transfer. That one ends now, and keeps
		// its place in the count until its session is gone.
		old.end.fire(errSuperseded)
		delete(s.active, from)
	}
	if refusal := s.admit(from.Addr()); refusal != nil {
		return nil, nil, refusal
	}
	t = newTransfer(req, from, dst, l)
	if s.cfg.singlePort {
		maxPacket := 1024 // a reader's client sends ACKs and ERRORs
		if req.op == opWRQ {
			maxPacket = 4 + maxBlksize + 1
		}
		t.inbox = newInbox(maxPacket)
	}
	s.active[from] = t
	s.running[t] = struct{}{}
	s.perClient[from.Addr()]++
	s.sessions.Add(1)
	return t, nil, nil
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
func (s *server) release(t *transfer) {
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

// shutdown stops taking requests and waits up to grace for running
// transfers, then ends the rest: every wait of theirs returns at once, so
// they are gone within shutdownStraggle.
func (s *server) shutdown(grace time.Duration) {
	started := time.Now()
	s.mu.Lock()
	s.closing = true
	for t := range s.running {
		t.drain()
	}
	s.mu.Unlock()
	if !s.cfg.singlePort {
		// Transfers have sockets of their own: the listeners can go at once.
		s.closeListeners()
	}
	done := make(chan struct{})
	go func() { s.sessions.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		s.mu.Lock()
		for t := range s.running {
			t.end.fire(errShutdown)
		}
		s.mu.Unlock()
		s.cache.close() // ends downloads and requests still waiting on an origin
		select {
		case <-done:
		case <-time.After(shutdownStraggle):
			s.log.Warn("transfers still running after shutdown", "count", s.runningCount())
		}
	}
	s.closeListeners()
	s.cache.close()
	s.noise.flush()
	// The hooks of the last transfers may run for what is left of the grace.
	s.hooks.close(started.Add(grace))
}

func (s *server) closeListeners() {
	for _, l := range s.listeners {
		l.conn.Close()
	}
}

// shutdownStraggle bounds the wait for transfers after they were told to end.
const shutdownStraggle = time.Second

func (s *server) runningCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.running)
}

// logTransfers logs every running transfer (SIGUSR1): client, file, bytes
// so far, rate and window, from what each engine shows once per window.
func (s *server) logTransfers() {
	s.mu.Lock()
	running := make([]*transfer, 0, len(s.running))
	for t := range s.running {
		running = append(running, t)
	}
	s.mu.Unlock()
	slices.SortFunc(running, func(a, b *transfer) int { return a.start.Compare(b.start) })
	s.log.Info("running transfers", "count", len(running), "status", s.metrics.status())
	for _, t := range running {
		elapsed := time.Since(t.start)
		bytes := t.progress.bytes.Load()
		s.log.Info("running transfer", "client", t.client.String(), "file", logText(t.req.filename), "op", t.req.opName(),
			"bytes", bytes, "elapsed", elapsed.Round(time.Millisecond),
			"rate_MBps", strconv.FormatFloat(float64(bytes)/max(elapsed.Seconds(), 1e-9)/1e6, 'f', 2, 64),
			"blksize", t.progress.blksize.Load(), "windowsize", t.progress.windowsize.Load())
	}
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
