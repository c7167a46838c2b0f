// The server's counters and the one way they leave it: Prometheus text
// exposition (format 0.0.4) answered on GET /metrics by a small HTTP/1.x
// responder on package net. Its own file because no other concern owns it:
// every layer from the listener to the origin counts into it, and it is the
// only TCP server in the program. The responder is not net/http's: the build
// without proxy support has no net/http at all (with it, 3.5 MB raw and
// 0.87 MB xz more on mipsle: over its budget), and in the proxy build
// http.Server costs 377 KB raw, 87 KB xz more than this responder
// (README's "Builds and their size").
//
// Nothing here runs per packet: a transfer is counted when it ends, and its
// bytes so far are read at a scrape from the progress its engine stores once
// per window. One mutex makes every scrape a consistent snapshot; labels are
// fixed words, never a file name or a client address.
package main

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Indexes of the op label: transfers are reads or writes.
const (
	opRead = iota
	opWrite
	numOps
)

var opLabels = [numOps]string{"read", "write"}

// opIndex is a request opcode's place in the op label.
func opIndex(op uint16) int {
	if op == opWRQ {
		return opWrite
	}
	return opRead
}

// outcome is how a transfer ended, the outcome label.
type outcome int

const (
	outcomeComplete outcome = iota
	outcomeFailed
	// outcomeAborted: the client ended it, with an ERROR (UEFI's size
	// probe sends one after the OACK), by leaving it for a new request, or
	// by closing its port.
	outcomeAborted
	// outcomeRefused: the request never became a transfer.
	outcomeRefused
	numOutcomes
)

var outcomeLabels = [numOutcomes]string{"complete", "failed", "aborted", "refused"}

// refusal is why a request was refused, the reason label.
type refusal int

const (
	refusedBusy refusal = iota
	refusedShutdown
	refusedMalformed
	refusedNotFound
	refusedAccess
	refusedExists
	refusedTooLarge
	refusedDiskFull
	refusedError
	numRefusals
)

var refusalLabels = [numRefusals]string{"busy", "shutdown", "malformed", "not_found", "access", "exists", "too_large", "disk_full", "error"}

// refusalReason is the reason label of the error a request was refused with.
func refusalReason(err error) refusal {
	we := toWireError(err)
	switch we {
	case errBusy:
		return refusedBusy
	case errShutdown:
		return refusedShutdown
	case errUploadTooLarge:
		return refusedTooLarge
	case errFileExists, errBeingWritten:
		return refusedExists
	}
	switch we.code {
	case codeNotFound:
		return refusedNotFound
	case codeAccess:
		return refusedAccess
	case codeDiskFull:
		return refusedDiskFull
	case codeIllegalOp:
		return refusedMalformed
	}
	return refusedError
}

// cacheResult is what the proxy cache did for a request, the result label.
type cacheResult int

const (
	cacheHit cacheResult = iota
	cacheMiss
	cacheRevalidated
	cacheUncacheable
	numCacheResults
)

var cacheResultLabels = [numCacheResults]string{"hit", "miss", "revalidated", "uncacheable"}

// hookResult is how a --hook run ended, the result label.
type hookResult int

const (
	hookOK hookResult = iota
	hookFailed
	hookTimedOut
	hookDropped
	numHookResults
)

var hookResultLabels = [numHookResults]string{"ok", "failed", "timeout", "dropped"}

// durationBuckets are the histogram's upper bounds: a boot loader's few KB
// take milliseconds, a kernel or a disk image seconds to minutes.
var durationBuckets = [...]time.Duration{
	10 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5 * time.Second,
	10 * time.Second, 30 * time.Second, time.Minute, 5 * time.Minute,
}

// histogram counts durations into durationBuckets, each count on its own
// (the exposition adds them up), the last one past every bound.
type histogram struct {
	counts [len(durationBuckets) + 1]uint64
	sum    time.Duration
}

func (h *histogram) observe(d time.Duration) {
	i := 0
	for i < len(durationBuckets) && d > durationBuckets[i] {
		i++
	}
	h.counts[i]++
	h.sum += d
}

// originKey is one origin_requests_total series.
type originKey struct {
	method string
	code   int // 0: no answer
}

// maxOriginSeries bounds the distinct method and status pairs kept: an
// origin cannot make the exposition grow without end.
const maxOriginSeries = 64

// metrics is everything the server counts. Its methods are safe for
// concurrent use; a nil *metrics counts nothing.
type metrics struct {
	version, build string
	proxy          bool // cache and origin series exist
	// cacheBytes is the proxy cache's size on disk, set by the cache.
	cacheBytes func() int64

	mu        sync.Mutex
	transfers [numOps][numOutcomes]uint64
	bytes     [numOps]uint64 // of transfers that ended
	// live is every running transfer's progress, by op: the bytes it has
	// moved so far count in bytes_total before it ends.
	live                  map[*transferProgress]int
	retransmits, timeouts uint64
	refused               [numRefusals]uint64
	durations             [numOps]histogram
	cache                 [numCacheResults]uint64
	origin                map[originKey]uint64
	mapReloads            [2]uint64 // ok, error
	hooks                 [numHookResults]uint64
}

func newMetrics(version, build string, proxy bool) *metrics {
	return &metrics{version: version, build: build, proxy: proxy,
		live: map[*transferProgress]int{}, origin: map[originKey]uint64{}}
}

// begin counts a transfer whose session starts; p is its engine's progress.
func (m *metrics) begin(op uint16, p *transferProgress) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.live[p] = opIndex(op)
	m.mu.Unlock()
}

// ended counts a transfer that ran, by how it ended.
func (m *metrics) ended(p *transferProgress, op uint16, o outcome, st transferStats, took time.Duration) {
	if m == nil {
		return
	}
	i := opIndex(op)
	m.mu.Lock()
	delete(m.live, p)
	m.transfers[i][o]++
	m.bytes[i] += uint64(st.bytes)
	m.retransmits += uint64(st.retransmits)
	m.timeouts += uint64(st.timeouts)
	m.durations[i].observe(took)
	m.mu.Unlock()
}

// refusedRequest counts a request refused before any transfer began: by
// the listener (p nil), or by its session (p its progress). A malformed
// request has no op; it counts only by its reason.
func (m *metrics) refusedRequest(p *transferProgress, op uint16, why refusal) {
	if m == nil {
		return
	}
	m.mu.Lock()
	if p != nil {
		delete(m.live, p)
	}
	if why != refusedMalformed {
		m.transfers[opIndex(op)][outcomeRefused]++
	}
	m.refused[why]++
	m.mu.Unlock()
}

func (m *metrics) cacheRequest(r cacheResult) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.cache[r]++
	m.mu.Unlock()
}

// originRequest counts a request to an origin by its method and the
// status it answered, 0 when it did not answer.
func (m *metrics) originRequest(method string, code int) {
	if m == nil {
		return
	}
	k := originKey{method, code}
	m.mu.Lock()
	if _, ok := m.origin[k]; ok || len(m.origin) < maxOriginSeries {
		m.origin[k]++
	}
	m.mu.Unlock()
}

func (m *metrics) mapReload(err error) {
	if m == nil {
		return
	}
	m.mu.Lock()
	if err == nil {
		m.mapReloads[0]++
	} else {
		m.mapReloads[1]++
	}
	m.mu.Unlock()
}

func (m *metrics) hookRun(r hookResult) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.hooks[r]++
	m.mu.Unlock()
}

// liveBytesLocked adds to bytes what the running transfers moved so far.
func (m *metrics) liveBytesLocked(bytes *[numOps]uint64, active *[numOps]int) {
	for p, op := range m.live {
		bytes[op] += uint64(max(p.bytes.Load(), 0))
		active[op]++
	}
}

// status is the one-line summary the service manager shows (STATUS=):
// transfers running, bytes sent, uploads stored since start.
func (m *metrics) status() string {
	var bytes [numOps]uint64
	var active [numOps]int
	m.mu.Lock()
	bytes = m.bytes
	m.liveBytesLocked(&bytes, &active)
	uploads := m.transfers[opWrite][outcomeComplete]
	m.mu.Unlock()
	b := strconv.AppendInt(nil, int64(active[opRead]+active[opWrite]), 10)
	b = append(plural(b, active[opRead]+active[opWrite], " transfer"), ", "...)
	b = append(appendSI(b, bytes[opRead]), " sent, "...)
	b = strconv.AppendUint(b, uploads, 10)
	b = plural(b, int(min(uploads, 2)), " upload")
	return string(append(b, " since start"...))
}

func plural(b []byte, n int, word string) []byte {
	b = append(b, word...)
	if n != 1 {
		b = append(b, 's')
	}
	return b
}

// appendSI writes a byte count as people read it: 980 B, 12.3 kB, 1.2 GB.
func appendSI(b []byte, n uint64) []byte {
	if n < 1000 {
		return append(strconv.AppendUint(b, n, 10), " B"...)
	}
	v, unit := float64(n), 0
	for v >= 999.95 && unit < 5 {
		v /= 1000
		unit++
	}
	b = strconv.AppendFloat(b, v, 'f', 1, 64)
	return append(append(b, ' '), [...]string{"", "kB", "MB", "GB", "TB", "PB"}[unit]...)
}

// exposition is text format 0.0.4 being written: each family's HELP and
// TYPE lines, then its samples.
type exposition struct{ b []byte }

func (e *exposition) family(name, kind, help string) {
	e.b = append(append(append(e.b, "# HELP "...), name...), ' ')
	e.b = append(append(append(e.b, help...), "\n# TYPE "...), name...)
	e.b = append(append(append(e.b, ' '), kind...), '\n')
}

// sample writes one line; labels are name, value pairs.
func (e *exposition) sample(name string, v uint64, labels ...string) {
	e.labels(name, labels)
	e.b = append(strconv.AppendUint(e.b, v, 10), '\n')
}

func (e *exposition) sampleFloat(name string, v float64, labels ...string) {
	e.labels(name, labels)
	e.b = append(strconv.AppendFloat(e.b, v, 'g', -1, 64), '\n')
}

func (e *exposition) labels(name string, labels []string) {
	e.b = append(e.b, name...)
	for i := 0; i+1 < len(labels); i += 2 {
		sep := byte(',')
		if i == 0 {
			sep = '{'
		}
		e.b = append(append(append(e.b, sep), labels[i]...), `="`...)
		e.b = append(appendLabelValue(e.b, labels[i+1]), '"')
	}
	if len(labels) > 0 {
		e.b = append(e.b, '}')
	}
	e.b = append(e.b, ' ')
}

// appendText writes every series in Prometheus text format 0.0.4, from
// one snapshot.
func (m *metrics) appendText(b []byte) []byte {
	var cacheSize int64
	if m.cacheBytes != nil {
		cacheSize = m.cacheBytes() // before m.mu: the cache counts into it under its own lock
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := &exposition{b}
	m.appendTransfers(e)
	m.appendDurations(e)
	if m.proxy {
		m.appendProxy(e, cacheSize)
	}
	e.family("tftpd_map_file_reloads_total", "counter", "Rereadings of the --map-file on SIGHUP, by result.")
	e.sample("tftpd_map_file_reloads_total", m.mapReloads[0], "result", "ok")
	e.sample("tftpd_map_file_reloads_total", m.mapReloads[1], "result", "error")
	e.family("tftpd_hook_runs_total", "counter", "Runs of the --hook program by result; dropped: the queue was full.")
	for r := range numHookResults {
		e.sample("tftpd_hook_runs_total", m.hooks[r], "result", hookResultLabels[r])
	}
	e.family("tftpd_build_info", "gauge", "The server's version and build (proxy or noproxy); always 1.")
	e.sample("tftpd_build_info", 1, "version", m.version, "build", m.build)
	return e.b
}

// appendTransfers writes the transfers' counts, bytes and refusals.
func (m *metrics) appendTransfers(e *exposition) {
	bytes := m.bytes
	var active [numOps]int
	m.liveBytesLocked(&bytes, &active)
	e.family("tftpd_transfers_total", "counter", "Requests by operation and how they ended: complete, failed, aborted by the client (an ERROR, as UEFI's size probe sends), or refused before a transfer began.")
	for op := range numOps {
		for o := range numOutcomes {
			e.sample("tftpd_transfers_total", m.transfers[op][o], "op", opLabels[op], "outcome", outcomeLabels[o])
		}
	}
	e.family("tftpd_bytes_total", "counter", "Payload bytes sent (read) and received (write), running transfers included.")
	for op := range numOps {
		e.sample("tftpd_bytes_total", bytes[op], "op", opLabels[op])
	}
	e.family("tftpd_transfers_active", "gauge", "Transfers running now.")
	for op := range numOps {
		e.sample("tftpd_transfers_active", uint64(active[op]), "op", opLabels[op])
	}
	e.family("tftpd_retransmits_total", "counter", "Packets sent again, by transfers that ended.")
	e.sample("tftpd_retransmits_total", m.retransmits)
	e.family("tftpd_timeouts_total", "counter", "Retransmission timeouts, by transfers that ended.")
	e.sample("tftpd_timeouts_total", m.timeouts)
	e.family("tftpd_requests_refused_total", "counter", "Requests refused, by reason (malformed ones included).")
	for r := range numRefusals {
		e.sample("tftpd_requests_refused_total", m.refused[r], "reason", refusalLabels[r])
	}
}

// appendDurations writes the histogram, its buckets cumulative.
func (m *metrics) appendDurations(e *exposition) {
	e.family("tftpd_transfer_duration_seconds", "histogram", "How long transfers that ran took, from the request to the end.")
	for op := range numOps {
		h := &m.durations[op]
		var cum uint64
		for i, c := range h.counts {
			cum += c
			le := "+Inf"
			if i < len(durationBuckets) {
				le = strconv.FormatFloat(durationBuckets[i].Seconds(), 'g', -1, 64)
			}
			e.sample("tftpd_transfer_duration_seconds_bucket", cum, "op", opLabels[op], "le", le)
		}
		e.sampleFloat("tftpd_transfer_duration_seconds_sum", h.sum.Seconds(), "op", opLabels[op])
		e.sample("tftpd_transfer_duration_seconds_count", cum, "op", opLabels[op])
	}
}

// appendProxy writes the cache's and the origins' series.
func (m *metrics) appendProxy(e *exposition, cacheSize int64) {
	e.family("tftpd_cache_requests_total", "counter", "Proxy cache lookups: served from the cache, downloaded, revalidated with the origin, or not cacheable.")
	for r := range numCacheResults {
		e.sample("tftpd_cache_requests_total", m.cache[r], "result", cacheResultLabels[r])
	}
	e.family("tftpd_cache_bytes", "gauge", "Bytes the proxy cache holds on disk.")
	e.sample("tftpd_cache_bytes", uint64(max(cacheSize, 0)))
	e.family("tftpd_origin_requests_total", "counter", "HTTP requests to origins by method and status code (code \"none\": no answer).")
	keys := make([]originKey, 0, len(m.origin))
	for k := range m.origin {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b originKey) int {
		if a.method != b.method {
			return strings.Compare(a.method, b.method)
		}
		return a.code - b.code
	})
	for _, k := range keys {
		code := "none"
		if k.code != 0 {
			code = strconv.Itoa(k.code)
		}
		e.sample("tftpd_origin_requests_total", m.origin[k], "method", k.method, "code", code)
	}
}

// appendLabelValue escapes a label value as the text format requires.
func appendLabelValue(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			b = append(b, `\\`...)
		case '"':
			b = append(b, `\"`...)
		case '\n':
			b = append(b, `\n`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// The scrape endpoint's limits: a few scrapers at once (one more is
// turned away at once), a request head of a few KB, and a deadline for the
// whole exchange, so a slow or hostile peer holds a slot only briefly.
const (
	maxScrapers      = 4
	maxScrapeHead    = 4096
	scrapeDeadline   = 5 * time.Second
	scrapeDrainLimit = time.Second
)

// serveMetrics answers scrapes on ln until it is closed.
func serveMetrics(ln net.Listener, m *metrics, log *slog.Logger) {
	slots := make(chan struct{}, maxScrapers)
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, say: try again shortly.
			log.Debug("metrics accept failed", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		select {
		case slots <- struct{}{}:
			go func() {
				answerScrape(c, m)
				<-slots // before the close: a scraper that saw it may come again at once
				c.Close()
			}()
		default:
			c.Close()
		}
	}
}

// answerScrape reads one request and answers it.
func answerScrape(c net.Conn, m *metrics) {
	c.SetDeadline(time.Now().Add(scrapeDeadline))
	head := make([]byte, 0, maxScrapeHead+1)
	status := 0
	for status == 0 {
		n, err := c.Read(head[len(head):cap(head)])
		head = head[:len(head)+n]
		if status = parseScrapeRequest(head); status == 0 && err != nil {
			return // gone, or too slow: nothing to answer
		}
	}
	var body []byte
	text := "404 Not Found"
	switch status {
	case 200:
		body, text = m.appendText(make([]byte, 0, 8192)), "200 OK"
	case 400:
		text = "400 Bad Request"
	case 431:
		text = "431 Request Header Fields Too Large"
	}
	if status != 200 {
		body = append([]byte(text), '\n')
	}
	resp := make([]byte, 0, 160+len(body))
	resp = append(append(append(resp, "HTTP/1.1 "...), text...), "\r\nContent-Type: "...)
	if status == 200 {
		resp = append(resp, "text/plain; version=0.0.4; charset=utf-8"...)
	} else {
		resp = append(resp, "text/plain; charset=utf-8"...)
	}
	resp = append(resp, "\r\nContent-Length: "...)
	resp = strconv.AppendInt(resp, int64(len(body)), 10)
	resp = append(append(resp, "\r\nConnection: close\r\n\r\n"...), body...)
	if _, err := c.Write(resp); err != nil {
		return
	}
	// Close only our side first: closing with the peer's bytes unread
	// would reset the connection and could lose the answer.
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
		c.SetReadDeadline(time.Now().Add(scrapeDrainLimit))
		var sink [512]byte
		for range 64 {
			if _, err := c.Read(sink[:]); err != nil {
				break
			}
		}
	}
}

// parseScrapeRequest decides the answer to a request head read so far: 0
// while it is incomplete, 200 for GET /metrics (any query), 404 for any
// other well-formed request, 400 for a malformed one, 431 for a head
// larger than maxScrapeHead. Only the request line matters; the header
// lines are skipped, and a body is never read (the connection closes).
func parseScrapeRequest(head []byte) int {
	end := -1 // the first empty line, CRLF or bare LF (RFC 9112 tolerates it)
	for _, blank := range [...]string{"\n\n", "\n\r\n"} {
		if i := bytes.Index(head, []byte(blank)); i >= 0 && (end < 0 || i < end) {
			end = i
		}
	}
	line, _, lineEnded := bytes.Cut(head, []byte("\n"))
	switch {
	case lineEnded && !validRequestLine(line):
		return 400 // no need to wait for the rest
	case end < 0 || end > maxScrapeHead:
		if len(head) > maxScrapeHead {
			return 431
		}
		return 0
	}
	method, rest, _ := bytes.Cut(bytes.TrimSuffix(line, []byte("\r")), []byte(" "))
	target, _, _ := bytes.Cut(rest, []byte(" "))
	path, _, _ := bytes.Cut(target, []byte("?"))
	if string(method) == "GET" && string(path) == "/metrics" {
		return 200
	}
	return 404
}

// validRequestLine checks "METHOD SP target SP HTTP/1.x" (RFC 9112): a
// token, a target of visible characters, and an HTTP/1 version.
func validRequestLine(line []byte) bool {
	line = bytes.TrimSuffix(line, []byte("\r"))
	method, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok || len(method) == 0 {
		return false
	}
	target, version, ok := bytes.Cut(rest, []byte(" "))
	if !ok || len(target) == 0 || (target[0] != '/' && string(target) != "*") {
		return false
	}
	for _, c := range method {
		if c <= ' ' || c >= 0x7f || bytes.IndexByte([]byte(`"(),/:;<=>?@[\]{}`), c) >= 0 {
			return false
		}
	}
	for _, c := range target {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return len(version) == len("HTTP/1.1") && string(version[:7]) == "HTTP/1." && version[7] >= '0' && version[7] <= '9'
}
