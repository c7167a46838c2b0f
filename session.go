// One transfer's whole life, from the listener's admission to its summary
// line: it opens the transfer's connection, maps the requested name, opens
// what the request leads to (a local file or a URL to read, an upload's
// file or URL to write), negotiates the options, runs the engine, and ends
// it: one log line with the client's MAC address, the metrics, the hook's
// event, the report, an upload's linger, the slot released. A session sees
// the server only through sessionEnv.
package main

import (
	"errors"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// transfer is one transfer as the listener and its session both see it:
// the request, where it came from, its one end signal and its progress.
type transfer struct {
	req    *request
	client netip.AddrPort
	dst    destination
	// listener is the socket the request came in on: it answers when no
	// transfer socket can be had, and in --single-port mode.
	listener *listeningSocket
	end      *transferEnd
	start    time.Time
	// progress is the engine's, read by the listener to tell a client's
	// retry from a new request, and by SIGUSR1 and the metrics.
	progress transferProgress
	// inbox serves --single-port mode only.
	inbox *inbox

	mu sync.Mutex
	// draining is set when the server shuts down; lingering while an
	// upload waits after its final ACK. A draining transfer does not
	// linger, and a lingering one ends when the server starts draining.
	draining, lingering bool
}

func newTransfer(req *request, client netip.AddrPort, dst destination, listener *listeningSocket) *transfer {
	return &transfer{req: req, client: client, dst: dst, listener: listener, end: newTransferEnd(), start: time.Now()}
}

// listeningSocket is one socket requests come in on (--listen may name
// several), with the batch mode of the --single-port transfers it answers.
type listeningSocket struct {
	conn  *net.UDPConn
	batch *socketBatchMode
}

// startLinger marks an upload that waits after its final ACK, unless the
// server is shutting down: a shutdown ends such waits at once rather than
// after the grace.
func (t *transfer) startLinger() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.draining {
		return false
	}
	t.lingering = true
	return true
}

// drain tells the transfer the server is shutting down: it may finish
// within the grace, but an upload that only lingers ends now.
func (t *transfer) drain() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.draining = true
	if t.lingering {
		t.end.fire(errShutdown)
	}
}

// sessionEnv is what a session is given: the limits, the name mapping,
// where names lead, the sockets it sends from, and how it reports its end.
type sessionEnv struct {
	cfg      *config
	log      *slog.Logger
	rules    *remapTable
	resolver *resolver
	cache    *cache
	uploads  *uploadTable // names being written into --upload-dir
	// firstBatchMode is how a new socket sends batches.
	firstBatchMode batchMode
	// release frees the transfer's slot with the listener.
	release func(*transfer)
	// metrics counts every transfer; hooks, with --hook, is told of each
	// one that ran.
	metrics *metrics
	hooks   *hookRunner
	// onDone, when set, receives the report of each finished transfer.
	onDone func(transferReport)
	// totalRate paces all downloads together (--max-total-rate); nil
	// without a limit.
	totalRate *ratePacer
	// ownThreads counts the transfers whose waits block a thread of their
	// own (threadConn); the others wait in Go's poller.
	ownThreads atomic.Int32
}

// maxOwnThreads is how many transfers at once wait on a thread of their
// own: one per two of the process's Ps. A thread blocked in a system call
// keeps its P until the runtime takes it back, which it does (handing the
// P to another thread, and back) only when other goroutines are waiting;
// with a P to spare that never happens, and one transfer alone, the usual
// lockstep boot, costs two thirds of the CPU the poller's wake-ups did.
// Beyond that, a room of lockstep clients costs more CPU per GB on own
// threads than on the poller (contrib/bench/boot-room.sh).
var maxOwnThreads = int32(max(1, runtime.GOMAXPROCS(0)/2))

// transferReport is what a finished session reports.
type transferReport struct {
	file                string
	mapped              string // the name served, after --map-file
	blksize, windowsize int
	stats               transferStats
	err                 error
	outcome             outcome
	mac                 string // the client's, when on a directly attached link
}

// session is one transfer while it runs.
type session struct {
	env    *sessionEnv
	t      *transfer
	conn   transferConn
	log    *slog.Logger
	start  time.Time
	name   string // what is served: the requested name after --map-file
	params transferParams
	upload uploadSink // where a WRQ's body goes
	// source is the file read or the URL, for the hook; started is set
	// once the request became a transfer: an error before is a refusal.
	source  string
	started bool
	// mac is the client's MAC address once looked up (macLookedUp): by the
	// mapping when a rule has \m, for the origin with --forward-client,
	// else after the transfer ran.
	mac         string
	macLookedUp bool
}

// runSession serves one admitted request to its end.
func runSession(env *sessionEnv, t *transfer) {
	sess := &session{
		env:    env,
		t:      t,
		log:    env.log.With("client", t.client.String(), "file", logText(t.req.filename)),
		start:  t.start,
		name:   t.req.filename,
		params: transferParams{blksize: defaultBlksize, windowsize: 1},
	}
	env.metrics.begin(t.req.op, &t.progress)
	conn, err := sess.connect()
	if errors.Is(err, errNoFreePort) {
		sess.log.Debug("server busy", "err", err) // the startup log warned of a small range
		_ = replyFrom(t.listener.conn, t.client, t.dst, errBusy)
		env.metrics.refusedRequest(&t.progress, t.req.op, refusedBusy)
		env.release(t)
		return
	}
	if err != nil {
		sess.log.Warn("cannot open transfer socket", "err", err)
		_ = replyFrom(t.listener.conn, t.client, t.dst, errNoSocket)
		env.metrics.refusedRequest(&t.progress, t.req.op, refusalReason(errNoSocket))
		env.release(t)
		return
	}
	sess.conn = conn
	sess.log = sess.log.With("local", conn.localAddr().String())
	stats, lingering, err := sess.run()
	if lingering == nil {
		sess.close()
	}
	sess.report(stats, err)
	if lingering != nil {
		if t.startLinger() {
			lingering.linger()
		}
		sess.close()
	}
}

// connect opens the transfer's connection: a socket of its own, or the
// listening socket in --single-port mode.
func (sess *session) connect() (transferConn, error) {
	env, t := sess.env, sess.t
	if env.cfg.singlePort {
		return newSharedConn(t.listener.conn, t.client, t.dst, t.inbox, t.end, t.listener.batch, env.log), nil
	}
	if env.ownThreads.Add(1) <= maxOwnThreads {
		conn, err := openThreadConn(t.client, t.dst, env.cfg.portRange, t.end, env.firstBatchMode, env.log)
		if err != nil {
			env.ownThreads.Add(-1)
		}
		return conn, err
	}
	env.ownThreads.Add(-1)
	return openSocketConn(t.client, t.dst, env.cfg.portRange, t.end, env.firstBatchMode, env.log)
}

// close ends the connection and frees the slot.
func (sess *session) close() {
	sess.conn.close()
	if _, ok := sess.conn.(*threadConn); ok {
		sess.env.ownThreads.Add(-1)
	}
	sess.env.release(sess.t)
}

// run maps the name and runs the request's engine. For an upload that was
// stored it returns the receiver, which lingers for a lost final ACK.
func (sess *session) run() (transferStats, *receiver, error) {
	req := sess.t.req
	servable := func(name string) bool { return nameServable(sess.env.cfg, sess.env.resolver, req.op, name) }
	name, err := sess.env.rules.mapRequest(req.filename, req.op, sess.t.client.Addr(), sess.clientMAC, servable, sess.log)
	if err != nil {
		return transferStats{}, nil, sendError(sess.conn, err)
	}
	sess.name = name
	if req.op == opWRQ {
		return sess.receive()
	}
	stats, err := sess.send()
	return stats, nil, err
}

// send serves a read request.
func (sess *session) send() (transferStats, error) {
	req := sess.t.req
	src, err := sess.openSource()
	if err != nil {
		return transferStats{}, sendError(sess.conn, err)
	}
	defer src.Close()
	if req.netascii {
		src = newNetascii(src)
	}
	size := int64(-1)
	if req.hasOption("tsize") {
		size = src.Size()
	}
	oack := sess.negotiate(size)
	sess.beginTransfer()
	pace := pacing{own: newRatePacer(sess.env.cfg.maxRate), total: sess.env.totalRate}
	w := newSender(sess.conn, src, sess.params, oack, sess.env.cfg.retries, pace, &sess.t.progress)
	err = w.run()
	return w.stats, err
}

// beginTransfer marks the request as a transfer, whose strays are answered
// (see strayGuard).
func (sess *session) beginTransfer() {
	sess.started = true
	sess.conn.answerStrays()
}

// receive takes a write request. Every refusal that can be known before
// the first block comes before negotiation, so the client gets its ERROR
// instead of an OACK.
func (sess *session) receive() (transferStats, *receiver, error) {
	req := sess.t.req
	sink, err := sess.openUpload()
	if err != nil {
		return transferStats{}, nil, sendError(sess.conn, err)
	}
	sess.upload = sink
	sess.beginTransfer()
	oack := sess.negotiate(-1)
	if req.netascii {
		sink = newNetasciiSink(sink, sess.params.blksize)
	}
	r := newReceiver(sess.conn, sink, sess.params, oack, sess.env.cfg.retries, &sess.t.progress)
	stats, err := r.run()
	if err != nil {
		return stats, nil, err
	}
	return stats, r, nil
}

// negotiate decides the transfer's options and returns the OACK, or nil.
func (sess *session) negotiate(size int64) []byte {
	cfg := sess.env.cfg
	capBlk := cfg.maxBlksize
	if capBlk == 0 {
		capBlk = blksizeCap(sess.t.dst.ifindex, !sess.t.client.Addr().Is4())
	}
	maxWindow, windowBytes := cfg.maxWindowsize, cfg.maxWindowBytes
	if sess.t.req.op == opWRQ {
		// The client sends the window: it must fit what the path holds.
		maxWindow = min(maxWindow, sess.conn.maxInbound())
	} else if rate := slowestRate(cfg); rate > 0 {
		// A paced window leaves at once: at most a quarter second of the
		// rate keeps the burst short (one block at the least).
		windowBytes = min(windowBytes, int(min(rate/4, math.MaxInt32)))
	}
	sess.params = negotiate(sess.t.req, size, negotiateLimits{
		maxBlksize:     capBlk,
		maxWindowsize:  maxWindow,
		maxWindowBytes: windowBytes,
		timeout:        cfg.timeout,
		noOptions:      cfg.noRFC2347,
	}, func(o option) { sess.log.Debug("option ignored", "name", o.name, "value", o.value) })
	if len(sess.params.answers) == 0 {
		return nil
	}
	return appendOACK(nil, sess.params.answers)
}

// slowestRate is the lower of the rate limits set, 0 with none.
func slowestRate(cfg *config) int64 {
	switch {
	case cfg.maxRate == 0:
		return cfg.maxTotalRate
	case cfg.maxTotalRate == 0:
		return cfg.maxRate
	}
	return min(cfg.maxRate, cfg.maxTotalRate)
}

// openSource finds what a read request names: a local file, or a URL the
// cache reads for as long as the transfer runs.
func (sess *session) openSource() (source, error) {
	res, err := sess.env.resolver.resolve(sess.name)
	if err != nil {
		return nil, err
	}
	if res.remote != nil {
		sess.log.Debug("proxying", "url", res.remote.shown())
		sess.source = res.remote.url.Redacted()
		sess.identify(res.remote)
		return sess.env.cache.open(res.remote, sess.t.end)
	}
	sess.source = res.local
	return openLocal(res.local)
}

// openUpload decides where a write request goes: relayed to a URL (a URL
// link in the root, or a URL --fallback without --upload-dir), into
// --upload-dir, or nowhere (--wrq-devnull, else refused). A tsize above
// the limit or the free space is refused here, before any data.
func (sess *session) openUpload() (uploadSink, error) {
	cfg, req := sess.env.cfg, sess.t.req
	size := req.tsize()
	if cfg.uploadDir == "" && !cfg.uploadHTTP {
		return nothingStored(cfg)
	}
	if size > cfg.uploadMaxSize {
		return nil, errUploadTooLarge
	}
	// A URL --fallback takes uploads only without --upload-dir: otherwise
	// every new name would go there.
	r := *sess.env.resolver
	if cfg.uploadDir != "" {
		r.fallback = ""
	}
	res, err := r.resolve(sess.name)
	if errors.Is(err, errProxyDisabled) {
		return nil, errRelayDisabled
	}
	if err != nil {
		return nil, err
	}
	if res.remote != nil {
		contentLength := size
		if req.netascii {
			contentLength = -1 // the announced size is before conversion
		}
		sess.log.Debug("relaying upload", "url", res.remote.shown())
		sess.identify(res.remote)
		relay, err := sess.env.cache.put(res.remote, contentLength)
		if err != nil {
			return nil, err
		}
		return newDigestSink(relay, cfg.uploadMaxSize), nil
	}
	if cfg.uploadDir == "" {
		return nothingStored(cfg)
	}
	file, err := createUpload(cfg, sess.env.uploads, sess.name, size)
	if err != nil {
		return nil, err
	}
	return newDigestSink(file, cfg.uploadMaxSize), nil
}

// nameServable tells a --map-file "E" rule whether a request op for name
// would find what it needs, without fetching anything: for a read, a
// readable regular file below the root (or a local --fallback folder), or
// a name below a URL link; for a write, the folder it would land in, a URL
// link to relay it to, or --wrq-devnull. A URL --fallback counts for
// neither: only a fetch could tell.
func nameServable(cfg *config, res *resolver, op uint16, name string) bool {
	r := *res
	if isURLTarget(r.fallback) || op == opWRQ {
		r.fallback = ""
	}
	if op == opWRQ && cfg.uploadDir == "" && !cfg.uploadHTTP {
		return cfg.wrqDevnull
	}
	found, err := r.resolve(name)
	switch {
	case err != nil:
		return false
	case found.remote != nil:
		return proxySupport
	case op == opWRQ && cfg.uploadDir == "":
		return cfg.wrqDevnull
	case op == opWRQ:
		rel, _ := cleanRequestPath(name) // resolve took it
		folder, _ := splitFolder(rel)
		dir, err := openConfinedDir(cfg.uploadDir, folder)
		if err != nil {
			return false
		}
		unix.Close(dir)
		return true
	}
	src, err := openLocal(found.local)
	if err != nil {
		return false
	}
	src.Close()
	return true
}

// nothingStored answers a WRQ that has nowhere to go: --wrq-devnull takes
// it, otherwise it is refused.
func nothingStored(cfg *config) (uploadSink, error) {
	if cfg.wrqDevnull {
		return discardSink{}, nil
	}
	return nil, errWriteDenied
}

// report counts the transfer, logs its one summary line, tells the hook of
// a transfer that ran and hands on its report. The count comes first, so
// that whoever reads the line finds it counted.
func (sess *session) report(stats transferStats, err error) {
	req := sess.t.req
	end := time.Now()
	if !stats.completed.IsZero() {
		end = stats.completed
	}
	elapsed := end.Sub(sess.start)
	o := transferOutcome(err)
	if !sess.started && o == outcomeFailed {
		o = outcomeRefused // the client never got past its request
	}
	if o == outcomeRefused {
		sess.env.metrics.refusedRequest(&sess.t.progress, req.op, refusalReason(err))
	} else {
		sess.env.metrics.ended(&sess.t.progress, req.op, o, stats, elapsed)
	}
	var mac string
	if o != outcomeRefused {
		mac = sess.clientMAC()
	}
	summary := sess.logSummary(stats, err, elapsed, mac)
	if o != outcomeRefused {
		sess.env.hooks.submit(sess.hookEvent(o, stats, elapsed, err, mac, summary))
	}
	if sess.env.onDone != nil {
		sess.env.onDone(transferReport{file: req.filename, mapped: sess.name, blksize: sess.params.blksize,
			windowsize: sess.params.windowsize, stats: stats, err: err, outcome: o, mac: mac})
	}
}

// identify tells the origin of rt who asks, with --forward-client.
func (sess *session) identify(rt *remoteTarget) {
	if proxySupport && sess.env.cfg.forwardClient {
		rt.client = &clientIdentity{addr: sess.t.client.Addr().Unmap(), mac: sess.clientMAC()}
	}
}

// clientMAC is the client's MAC address when the neighbour table knows it,
// looked up once: for the mapping when a rule has \m, for the origin with
// --forward-client, else after the transfer ran. The first answer is the
// summary line's and the hook's.
func (sess *session) clientMAC() string {
	if !sess.macLookedUp {
		var err error
		sess.mac, err = clientMAC(sess.t.client.Addr(), sess.t.dst.ifindex)
		if err != nil {
			sess.log.Debug("no MAC address from the neighbour table", "err", err)
		}
		sess.macLookedUp = true
	}
	return sess.mac
}

// logSummary logs the transfer's summary line and returns an upload's own
// part of it (where it went, what was stored), for the hook.
func (sess *session) logSummary(stats transferStats, err error, elapsed time.Duration, mac string) []any {
	req := sess.t.req
	rate := float64(stats.bytes) / max(elapsed.Seconds(), 1e-9)
	attrs := []any{
		"op", req.opName(),
		"blksize", sess.params.blksize, "windowsize", sess.params.windowsize,
		"bytes", stats.bytes, "duration", elapsed.Round(time.Microsecond),
		"rate_MBps", strconv.FormatFloat(rate/1e6, 'f', 2, 64),
		"retransmits", stats.retransmits, "timeouts", stats.timeouts,
		"rtt", stats.rtt.Round(time.Microsecond),
	}
	if stats.paced > 0 {
		attrs = append(attrs, "paced", stats.paced.Round(time.Millisecond))
	}
	if mac != "" {
		attrs = append(attrs, "mac", mac)
	}
	if sess.name != req.filename {
		attrs = append(attrs, "mapped", logText(sess.name))
	}
	var summary []any
	if sess.upload != nil {
		summary = sess.upload.summary()
		attrs = append(append(attrs, "tsize", req.tsize()), summary...)
	}
	switch {
	case err == nil:
		sess.log.Info("transfer complete", attrs...)
	case errors.Is(err, errClientAbort):
		sess.log.Info("transfer ended by the client", attrs...)
	case errors.Is(err, errSuperseded):
		sess.log.Info("transfer left for a new request from the same client port", attrs...)
	case errors.Is(err, errClientGone):
		sess.log.Info("transfer ended by the client: its port is closed", attrs...)
	default:
		sess.log.Info("transfer failed", append(attrs, "err", logText(err.Error()))...)
	}
	return summary
}

// transferOutcome is how a transfer that ran ended with err.
func transferOutcome(err error) outcome {
	switch {
	case err == nil:
		return outcomeComplete
	case errors.Is(err, errClientAbort), errors.Is(err, errSuperseded), errors.Is(err, errClientGone):
		return outcomeAborted
	}
	return outcomeFailed
}

// hookEvent is what the hook is told of a transfer that ran. An upload's
// path and SHA-256 come from its sink's summary, as in the log line, and
// only when it was stored.
func (sess *session) hookEvent(o outcome, stats transferStats, took time.Duration, err error, mac string, summary []any) hookEvent {
	ev := hookEvent{
		op:          sess.t.req.opName(),
		file:        sess.t.req.filename,
		name:        sess.name,
		path:        sess.source,
		client:      sess.t.client,
		mac:         mac,
		bytes:       stats.bytes,
		took:        took,
		outcome:     outcomeLabels[o],
		retransmits: stats.retransmits,
	}
	if err != nil {
		ev.err = err.Error()
	}
	if sess.upload != nil {
		ev.path = ""
		for i := 0; o == outcomeComplete && i+1 < len(summary); i += 2 {
			v, _ := summary[i+1].(string)
			switch summary[i] {
			case "path", "url":
				ev.path = v
			case "sha256":
				ev.sha256 = v
			}
		}
	}
	return ev
}
