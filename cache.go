//go:build !noproxy

// The HTTP cache behind proxy mode, and the HTTP client that fills it. Each downloaded body lives in an
// anonymous file (O_TMPFILE, or created and unlinked at once where the file
// system refuses that), so nothing is left on disk however the server ends.
// One download runs per URL: transfers that want the same URL share it, a
// transfer ahead of the download waits for its bytes, and once the body is
// complete every reader goes straight to the file by offset, without locks.
// Freshness follows RFC 9111 for a shared cache: a fresh entry is served
// without asking the origin, a stale one is revalidated with its validators.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// cacheSweepInterval is how often unused expired entries are dropped.
	cacheSweepInterval = 30 * time.Second
	// staleKeep is how long an expired entry with validators is kept for a
	// cheap revalidation (a 304 instead of the whole body).
	staleKeep = time.Hour
	// maxHeuristicFreshness caps the freshness guessed from Last-Modified
	// alone (RFC 9111 4.2.2: a tenth of the time since the last change).
	maxHeuristicFreshness = 24 * time.Hour
)

// proxySupport is false in a build with the noproxy tag.
const proxySupport = true

var (
	errCacheUnavailable = &wireError{codeUndefined, "proxy cache unavailable"}
	errUpstreamDown     = &wireError{codeUndefined, "upstream server unreachable"}
	errUpstreamBroken   = &wireError{codeUndefined, "upstream download failed"}
	errUpstreamStall    = &wireError{codeUndefined, "upstream download stalled"}
)

// storedHeaders are the response headers that freshness and revalidation
// need; a 304 replaces those it carries (RFC 9111 4.3.4).
var storedHeaders = []string{"Cache-Control", "Expires", "Date", "Age", "Last-Modified", "ETag"}

// copyStoredHeaders replaces dst's storedHeaders with those src has.
func copyStoredHeaders(dst, src http.Header) {
	for _, name := range storedHeaders {
		if v := src.Values(name); len(v) > 0 {
			dst[http.CanonicalHeaderKey(name)] = v
		}
	}
}

// cacheMeta is what the cache knows of a stored response.
type cacheMeta struct {
	etag, lastModified string    // validators, sent back verbatim
	freshUntil         time.Time // served without asking the origin before this
	received           time.Time // when the response (or its last 304) arrived
	storable           bool      // neither no-store nor private
}

// cacheControl is a parsed Cache-Control field. Ages are -1 when absent.
type cacheControl struct {
	maxAge, sMaxAge           int64
	noStore, noCache, private bool
	invalid                   bool // a malformed or repeated age: treat as stale
}

// maxDeltaSeconds is RFC 9111's bound for delta-seconds (1.2.2).
const maxDeltaSeconds = 1 << 31

// parseCacheControl reads every Cache-Control line. Directive names are
// case-insensitive; a quoted value may hold commas.
func parseCacheControl(lines []string) cacheControl {
	cc := cacheControl{maxAge: -1, sMaxAge: -1}
	for _, line := range lines {
		for _, d := range splitDirectives(line) {
			name, value, _ := strings.Cut(d, "=")
			name = strings.ToLower(strings.TrimSpace(name))
			value = strings.Trim(strings.TrimSpace(value), `"`)
			switch name {
			case "no-store":
				cc.noStore = true
			case "no-cache":
				cc.noCache = true
			case "private":
				cc.private = true
			case "max-age":
				cc.maxAge = parseAge(value, cc.maxAge, &cc.invalid)
			case "s-maxage":
				cc.sMaxAge = parseAge(value, cc.sMaxAge, &cc.invalid)
			}
		}
	}
	return cc
}

// parseAge reads delta-seconds; a bad or second value marks the field invalid.
func parseAge(v string, previous int64, invalid *bool) int64 {
	n, ok := parseOptionNumber(v, 0, 1<<62)
	if !ok || previous >= 0 {
		*invalid = true
		return max(previous, 0)
	}
	return min(n, maxDeltaSeconds)
}

// splitDirectives splits on commas outside quoted strings.
func splitDirectives(s string) []string {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && quoted:
			i++
		case s[i] == '"':
			quoted = !quoted
		case s[i] == ',' && !quoted:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// parseHTTPDate accepts the three date formats of RFC 9110 5.6.7. Anything
// else (such as the common "Expires: 0") is not a date.
func parseHTTPDate(v string) (time.Time, bool) {
	t, err := http.ParseTime(strings.TrimSpace(v))
	return t, err == nil
}

// freshness computes a response's metadata (RFC 9111 4.2) from its headers,
// when it was requested and when its headers arrived. Malformed dates and
// ages make a response stale, never a failure.
func freshness(h http.Header, requested, received time.Time) cacheMeta {
	cc := parseCacheControl(h.Values("Cache-Control"))
	meta := cacheMeta{etag: h.Get("ETag"), received: received, storable: !cc.noStore && !cc.private}
	lastModified, hasLastModified := parseHTTPDate(h.Get("Last-Modified"))
	if hasLastModified {
		meta.lastModified = h.Get("Last-Modified")
	}
	if cc.noCache || cc.invalid {
		return meta
	}
	date, ok := parseHTTPDate(h.Get("Date"))
	if !ok {
		date = received
	}
	var lifetime time.Duration
	switch {
	case cc.sMaxAge >= 0:
		lifetime = time.Duration(cc.sMaxAge) * time.Second
	case cc.maxAge >= 0:
		lifetime = time.Duration(cc.maxAge) * time.Second
	case h.Get("Expires") != "":
		if expires, ok := parseHTTPDate(h.Get("Expires")); ok {
			lifetime = expires.Sub(date)
		}
	case hasLastModified && date.After(lastModified):
		lifetime = min(date.Sub(lastModified)/10, maxHeuristicFreshness)
	}
	age := max(received.Sub(date), 0)
	if ageHeader, ok := parseOptionNumber(strings.TrimSpace(h.Get("Age")), 0, maxDeltaSeconds); ok {
		age = max(age, time.Duration(ageHeader)*time.Second+received.Sub(requested))
	}
	if lifetime > age {
		meta.freshUntil = received.Add(lifetime - age)
	}
	return meta
}

// cacheEntry is one response body, complete or being downloaded.
type cacheEntry struct {
	key      string
	shownURL string // key without a password, for logs
	file     *os.File
	complete atomic.Bool // the body is all there: readers skip the lock

	mu       sync.Mutex
	progress chan struct{} // closed when written grows or the download ends
	written  int64
	size     int64 // the declared length, -1 while unknown
	done     bool
	err      error
	cancel   func() // ends the download

	// Guarded by cache.mu.
	header   http.Header // storedHeaders of the response
	meta     cacheMeta
	refs     int
	inCache  bool
	lastUsed time.Time
}

// advance publishes bytes the download has written.
func (e *cacheEntry) advance(written int64) {
	e.mu.Lock()
	e.written = written
	close(e.progress)
	e.progress = make(chan struct{})
	e.mu.Unlock()
}

// end records the end of the download; err is nil when the body is whole.
func (e *cacheEntry) end(err error) {
	e.mu.Lock()
	e.done, e.err = true, err
	close(e.progress)
	e.mu.Unlock()
	if err == nil {
		e.complete.Store(true)
	}
}

// state returns the download's progress and a channel closed at the next
// change (nil once the download has ended).
func (e *cacheEntry) state() (written, size int64, done bool, err error, changed <-chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.done {
		changed = e.progress
	}
	return e.written, e.size, e.done, e.err, changed
}

// bytesOnDisk is what the entry occupies.
func (e *cacheEntry) bytesOnDisk() int64 {
	written, _, _, _, _ := e.state()
	return written
}

func (e *cacheEntry) hasValidators() bool { return e.meta.etag != "" || e.meta.lastModified != "" }

// usable reports whether a request may share the entry without asking the
// origin: its download is still running (the response is being received
// now), or it is complete and fresh.
func (e *cacheEntry) usable(now time.Time) bool {
	_, _, done, err, _ := e.state()
	return err == nil && (!done || now.Before(e.meta.freshUntil))
}

func (e *cacheEntry) closeFile() {
	if e.cancel != nil {
		e.cancel()
	}
	e.file.Close()
}

// entryReader is one transfer's view of an entry: the source it serves.
type entryReader struct {
	cache  *cache
	entry  *cacheEntry
	stop   <-chan struct{}
	closed sync.Once
}

func (r *entryReader) ReadAt(p []byte, off int64) (int, error) {
	e := r.entry
	if e.complete.Load() {
		return e.file.ReadAt(p, off)
	}
	for {
		written, _, done, err, changed := e.state()
		switch {
		case err != nil:
			return 0, err
		case done || written >= off+int64(len(p)):
			return e.file.ReadAt(p, off)
		}
		select {
		case <-changed:
		case <-r.stop:
			return 0, errShutdown
		}
	}
}

// Size waits until the size is known: at once with a Content-Length,
// after the whole download without one. It is -1 when the download failed
// (the next read reports why).
func (r *entryReader) Size() int64 {
	for {
		written, size, done, err, changed := r.entry.state()
		switch {
		case err != nil:
			return -1
		case size >= 0:
			return size
		case done:
			return written
		}
		select {
		case <-changed:
		case <-r.stop:
			return -1
		}
	}
}

func (r *entryReader) Close() error {
	r.closed.Do(func() { r.cache.release(r.entry) })
	return nil
}

// fetchCall is a request to the origin that others for the same URL wait
// for instead of sending their own.
type fetchCall struct {
	done   chan struct{}
	joined int // guarded by cache.mu
	entry  *cacheEntry
	err    error
}

// cache holds downloaded bodies by URL (without modifiers).
type cache struct {
	client  *http.Client
	dir     string
	maxSize int64
	log     *slog.Logger
	now     func() time.Time

	mu      sync.Mutex
	entries map[string]*cacheEntry
	pending map[string]*fetchCall
	closed  chan struct{}
	closing sync.Once
	// requests is the context of every request to an origin: close ends
	// those still waiting, so a shutdown does not wait for a slow origin.
	requests       context.Context
	cancelRequests context.CancelFunc
}

func newCache(dir string, maxSize int64, log *slog.Logger) *cache {
	requests, cancelRequests := context.WithCancel(context.Background())
	return &cache{
		requests:       requests,
		cancelRequests: cancelRequests,
		client:         newHTTPClient(),
		dir:            dir,
		maxSize:        maxSize,
		log:            log,
		now:            time.Now,
		entries:        map[string]*cacheEntry{},
		pending:        map[string]*fetchCall{},
		closed:         make(chan struct{}),
	}
}

// run sweeps the cache until close.
func (c *cache) run() {
	tick := time.NewTicker(cacheSweepInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			c.sweep(c.now())
		case <-c.closed:
			return
		}
	}
}

// close stops the sweep and empties the cache; a second call does nothing.
func (c *cache) close() {
	c.closing.Do(func() {
		close(c.closed)
		c.cancelRequests()
		c.clear()
	})
}

// open returns a reader of rt's body. With nocache the download is this
// transfer's own; otherwise a usable entry is shared, or one request to the
// origin is made for everyone asking at the same time.
func (c *cache) open(rt *remoteTarget, stop <-chan struct{}) (source, error) {
	if rt.nocache {
		e, err := c.fetch(rt, nil)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		e.refs++
		c.mu.Unlock()
		return &entryReader{cache: c, entry: e, stop: stop}, nil
	}
	key := rt.url.String()
	c.mu.Lock()
	if call := c.pending[key]; call != nil {
		call.joined++
		c.mu.Unlock()
		<-call.done
		if call.err != nil {
			return nil, call.err
		}
		return &entryReader{cache: c, entry: call.entry, stop: stop}, nil
	}
	stored := c.entries[key]
	if stored != nil && stored.usable(c.now()) {
		stored.refs++
		stored.lastUsed = c.now()
		c.mu.Unlock()
		return &entryReader{cache: c, entry: stored, stop: stop}, nil
	}
	call := &fetchCall{done: make(chan struct{})}
	c.pending[key] = call
	if stored != nil {
		stored.refs++ // kept open for a 304 while the request runs
	}
	c.mu.Unlock()

	e, err := c.fetch(rt, stored)

	c.mu.Lock()
	delete(c.pending, key)
	if err == nil {
		e.refs += 1 + call.joined
		e.lastUsed = c.now()
		if e != stored {
			if stored != nil && c.entries[key] == stored {
				c.removeLocked(stored) // readers of the old body finish on it
			}
			if e.meta.storable {
				c.entries[key], e.inCache = e, true
			}
		}
	}
	if stored != nil {
		c.releaseLocked(stored)
	}
	call.entry, call.err = e, err
	close(call.done)
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return &entryReader{cache: c, entry: e, stop: stop}, nil
}

// fetch asks the origin. A 304 refreshes stored and returns it; a 200
// returns a new entry whose download has started.
func (c *cache) fetch(rt *remoteTarget, stored *cacheEntry) (*cacheEntry, error) {
	var validators *cacheEntry
	if stored != nil && stored.hasValidators() {
		validators = stored
	}
	requested := c.now()
	resp, err := c.get(rt, validators)
	if err != nil {
		return nil, err
	}
	received := c.now()
	if resp.StatusCode == http.StatusNotModified {
		resp.Body.Close()
		resp.cancel()
		if validators == nil {
			c.log.Warn("upstream answered 304 to an unconditional request", "url", rt.shown())
			return nil, errUpstreamBroken
		}
		c.mu.Lock()
		copyStoredHeaders(stored.header, resp.Header)
		stored.meta = freshness(stored.header, requested, received)
		c.mu.Unlock()
		c.log.Debug("revalidated", "url", rt.shown())
		return stored, nil
	}
	file, err := anonymousFile(c.dir)
	if err != nil {
		resp.Body.Close()
		resp.cancel()
		c.log.Error("cannot create a cache file", "dir", c.dir, "err", err)
		return nil, errCacheUnavailable
	}
	e := &cacheEntry{
		key:      rt.url.String(),
		shownURL: rt.shown(),
		file:     file,
		progress: make(chan struct{}),
		size:     -1,
		cancel:   resp.cancel,
		header:   http.Header{},
	}
	copyStoredHeaders(e.header, resp.Header)
	e.meta = freshness(e.header, requested, received)
	if rt.nocache {
		e.meta.storable = false
	}
	if !resp.Uncompressed && resp.ContentLength >= 0 {
		e.size = resp.ContentLength
	}
	go c.download(e, resp, rt)
	return e, nil
}

// download copies the body into the entry's file.
func (c *cache) download(e *cacheEntry, resp *upstreamResponse, rt *remoteTarget) {
	defer resp.cancel()
	defer resp.Body.Close()
	start := c.now()
	buf := make([]byte, 64<<10)
	var written int64
	for {
		n, err := resp.body.Read(buf)
		if n > 0 {
			if _, werr := e.file.WriteAt(buf[:n], written); werr != nil {
				err = werr
			} else {
				written += int64(n)
				e.advance(written)
			}
		}
		if errors.Is(err, io.EOF) && e.size >= 0 && written != e.size {
			err = io.ErrUnexpectedEOF
		}
		if errors.Is(err, io.EOF) {
			e.end(nil)
			c.log.Info("downloaded", "url", rt.shown(), "bytes", written, "duration", c.now().Sub(start).Round(time.Millisecond))
			c.mu.Lock()
			c.enforceLimitLocked()
			c.mu.Unlock()
			return
		}
		if err != nil {
			c.log.Warn("download failed", "url", rt.shown(), "after", written, "err", logText(err.Error()))
			if !errors.Is(err, errUpstreamStall) {
				err = errUpstreamBroken
			}
			e.end(err)
			c.mu.Lock()
			if c.entries[e.key] == e {
				c.removeLocked(e)
			}
			c.mu.Unlock()
			return
		}
	}
}

// removeLocked takes an entry out of the cache; its file goes with its
// last reader.
func (c *cache) removeLocked(e *cacheEntry) {
	if c.entries[e.key] == e {
		delete(c.entries, e.key)
	}
	e.inCache = false
	if e.refs == 0 {
		e.closeFile()
	}
}

func (c *cache) release(e *cacheEntry) {
	c.mu.Lock()
	c.releaseLocked(e)
	c.enforceLimitLocked()
	c.mu.Unlock()
}

func (c *cache) releaseLocked(e *cacheEntry) {
	e.refs--
	if e.refs == 0 && !e.inCache {
		e.closeFile()
	}
}

// enforceLimitLocked evicts the least recently used entries nobody reads
// until the cache fits --cache-max-size.
func (c *cache) enforceLimitLocked() {
	var total int64
	var idle []*cacheEntry
	for _, e := range c.entries {
		total += e.bytesOnDisk()
		if e.refs == 0 {
			idle = append(idle, e)
		}
	}
	if total <= c.maxSize {
		return
	}
	slices.SortFunc(idle, func(a, b *cacheEntry) int { return a.lastUsed.Compare(b.lastUsed) })
	for _, e := range idle {
		if total <= c.maxSize {
			break
		}
		total -= e.bytesOnDisk()
		c.log.Debug("evicted", "url", e.key)
		c.removeLocked(e)
	}
}

// sweep drops unused entries that expired: at once without validators,
// after staleKeep with them.
func (c *cache) sweep(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		_, _, done, _, _ := e.state()
		if e.refs > 0 || !done || now.Before(e.meta.freshUntil) {
			continue
		}
		if !e.hasValidators() || now.Sub(later(e.meta.freshUntil, e.meta.received)) > staleKeep {
			c.removeLocked(e)
		}
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// clear empties the cache (SIGUSR2); transfers reading an entry finish first.
func (c *cache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		c.removeLocked(e)
	}
}

// dump logs every entry (SIGUSR1).
func (c *cache) dump() {
	c.mu.Lock()
	defer c.mu.Unlock()
	var total int64
	for _, e := range c.entries {
		total += e.bytesOnDisk()
	}
	c.log.Info("cache", "entries", len(c.entries), "bytes", total, "max_bytes", c.maxSize)
	now := c.now()
	for _, e := range c.entries {
		written, size, done, _, _ := e.state()
		state := "complete"
		if !done {
			state = fmt.Sprintf("downloading (%d of %d)", written, size)
		}
		fresh := "stale"
		if now.Before(e.meta.freshUntil) {
			fresh = "fresh for " + e.meta.freshUntil.Sub(now).Round(time.Second).String()
		}
		c.log.Info("cache entry", "url", e.shownURL, "bytes", written, "state", state, "freshness", fresh, "readers", e.refs)
	}
}

// anonymousFile creates a file that has no name: it vanishes with its last
// descriptor.
func anonymousFile(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), filepath.Join(dir, "(anonymous)")), nil
	}
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EINVAL) {
		return unlinkedTempFile(dir)
	}
	return nil, err
}

// unlinkedTempFile is anonymousFile for file systems without O_TMPFILE.
func unlinkedTempFile(dir string) (*os.File, error) {
	f, err := os.CreateTemp(dir, ".r-tftpd-cache-*")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Upstream timeouts: connecting and waiting for headers are bounded, and so
// is a body that stops moving; a slow but moving body is not.
const (
	upstreamConnectTimeout = 10 * time.Second
	upstreamHeaderTimeout  = 30 * time.Second
	upstreamStallTimeout   = 30 * time.Second
)

// newHTTPClient is the one client every download shares. Go's defaults give
// the rest: at most 10 redirects, HTTP_PROXY/HTTPS_PROXY/NO_PROXY, the
// system's CA roots and SSL_CERT_FILE, and transparent gzip unless a request
// asks for an encoding itself.
func newHTTPClient() *http.Client {
	dialer := &net.Dialer{Timeout: upstreamConnectTimeout, KeepAlive: 30 * time.Second}
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   upstreamConnectTimeout,
		ResponseHeaderTimeout: upstreamHeaderTimeout,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   4,
		ForceAttemptHTTP2:     true,
	}}
}

// upstreamResponse is a response whose body is being read under a stall
// bound; cancel ends the request.
type upstreamResponse struct {
	*http.Response
	body   io.Reader
	cancel context.CancelFunc
}

// get sends a GET for rt, conditional on the validators of a stored entry
// when there is one. A status other than 200 or 304 becomes the error the
// TFTP client is told; the body is then closed.
func (c *cache) get(rt *remoteTarget, stored *cacheEntry) (*upstreamResponse, error) {
	ctx, cancel := context.WithCancel(c.requests)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rt.url.String(), nil)
	if err != nil {
		cancel()
		return nil, errBadProxyURL
	}
	req.Header.Set("User-Agent", "r-tftpd/"+version)
	if rt.nocompress {
		req.Header.Set("Accept-Encoding", "identity")
	}
	if stored != nil {
		if stored.meta.etag != "" {
			req.Header.Set("If-None-Match", stored.meta.etag)
		}
		if stored.meta.lastModified != "" {
			req.Header.Set("If-Modified-Since", stored.meta.lastModified)
		}
	}
	resp, err := c.client.Do(req)
	if err != nil {
		cancel()
		c.log.Warn("upstream request failed", "url", rt.shown(), "err", logText(err.Error()))
		return nil, errUpstreamDown
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusNotModified:
	default:
		resp.Body.Close()
		cancel()
		c.log.Warn("upstream refused", "url", rt.shown(), "status", resp.Status)
		return nil, statusError(resp.StatusCode)
	}
	if enc := resp.Header.Get("Content-Encoding"); !resp.Uncompressed && enc != "" && enc != "identity" {
		resp.Body.Close()
		cancel()
		c.log.Warn("upstream sent an encoding that was not asked for", "url", rt.shown(), "encoding", enc)
		return nil, errUpstreamBroken
	}
	return &upstreamResponse{Response: resp, body: newStallReader(resp.Body, cancel, upstreamStallTimeout), cancel: cancel}, nil
}

// statusError maps an upstream status to what the TFTP client is told.
func statusError(status int) error {
	switch status {
	case http.StatusNotFound, http.StatusGone:
		return errNotFound
	case http.StatusUnauthorized, http.StatusForbidden:
		return errAccess
	default:
		return newWireError(codeUndefined, "upstream answered HTTP %d", status)
	}
}

// stallReader cancels a request whose body has not moved for a while. The
// read that was waiting then fails, and the failure names the stall.
type stallReader struct {
	r       io.Reader
	limit   time.Duration
	timer   *time.Timer
	stalled chan struct{}
	once    sync.Once // a Reset racing the timer may fire it twice
}

func newStallReader(r io.Reader, cancel context.CancelFunc, limit time.Duration) *stallReader {
	s := &stallReader{r: r, limit: limit, stalled: make(chan struct{})}
	s.timer = time.AfterFunc(limit, func() { s.once.Do(func() { close(s.stalled); cancel() }) })
	return s
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	select {
	case <-s.stalled:
		return n, fmt.Errorf("%w: no data for %v", errUpstreamStall, s.limit)
	default:
	}
	if err == nil {
		s.timer.Reset(s.limit)
	} else {
		s.timer.Stop()
	}
	return n, err
}

// Uploads relayed to HTTP: a WRQ below a URL link becomes a PUT of its body.

var (
	errUpstreamRefusedUpload = &wireError{codeAccess, "upstream refused the upload"}
	errUpstreamFull          = &wireError{codeDiskFull, "upstream has no room for the upload"}
	errUpstreamUploadBroken  = &wireError{codeUndefined, "upstream connection broken during the upload"}
)

// httpUpload streams an upload to its URL while the TFTP transfer runs.
// The request goes out at once: with a Content-Length when the client
// announced the size, chunked otherwise. Blocks pass through a buffer into
// a pipe that the HTTP client reads as the request body.
type httpUpload struct {
	uploadDigest
	cache  *cache
	rt     *remoteTarget
	body   *io.PipeWriter
	buf    *bufio.Writer
	cancel context.CancelFunc
	result chan error // the origin's answer, mapped to a wire error
	status int        // the origin's status, for the log; guarded by result
	err    error      // the answer once received
	ended  bool
}

func (c *cache) put(rt *remoteTarget, contentLength, limit int64) (uploadSink, error) {
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, rt.url.String(), pr)
	if err != nil {
		cancel()
		return nil, errBadProxyURL
	}
	req.ContentLength = -1
	if contentLength > 0 {
		req.ContentLength = contentLength
	}
	req.Header.Set("User-Agent", "r-tftpd/"+version)
	req.Header.Set("Content-Type", "application/octet-stream")
	u := &httpUpload{
		uploadDigest: newUploadDigest(limit),
		cache:        c,
		rt:           rt,
		body:         pw,
		cancel:       cancel,
		result:       make(chan error, 1),
	}
	// The origin gets upstreamStallTimeout to take each buffered chunk; a
	// write that waits longer ends the request.
	stall := time.AfterFunc(upstreamStallTimeout, cancel)
	stall.Stop()
	u.buf = bufio.NewWriterSize(&stallWriter{w: pw, timer: stall, limit: upstreamStallTimeout}, 32<<10)
	go func() {
		err := u.send(req)
		// A write still waiting on the pipe learns the answer at once.
		pr.CloseWithError(err)
		u.result <- err
	}()
	return u, nil
}

// send runs the request and maps the origin's answer.
func (u *httpUpload) send(req *http.Request) error {
	resp, err := u.cache.client.Do(req)
	if err != nil {
		u.cache.log.Warn("upload to upstream failed", "url", u.rt.url.Redacted(), "err", err)
		return errUpstreamUploadBroken
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	u.status = resp.StatusCode
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return errUpstreamRefusedUpload
	case resp.StatusCode == http.StatusRequestEntityTooLarge || resp.StatusCode == http.StatusInsufficientStorage:
		return errUpstreamFull
	}
	u.cache.log.Warn("upstream refused the upload", "url", u.rt.url.Redacted(), "status", resp.Status)
	return newWireError(codeUndefined, "upstream answered HTTP %d", resp.StatusCode)
}

// answer waits for the end of the request.
func (u *httpUpload) answer() error {
	if !u.ended {
		u.err, u.ended = <-u.result, true
	}
	return u.err
}

func (u *httpUpload) write(p []byte) error {
	if err := u.add(p); err != nil {
		return err
	}
	if _, err := u.buf.Write(p); err != nil {
		// The request ended early: the origin answered, or the
		// connection broke. Its answer says why.
		if aerr := u.answer(); aerr != nil {
			return aerr
		}
		return errUpstreamUploadBroken
	}
	return nil
}

// commit ends the body and waits for the origin: the final ACK goes out
// only after a 2xx. The URL's cached body is then out of date.
func (u *httpUpload) commit() error {
	err := u.buf.Flush()
	if err == nil {
		u.body.Close()
	} else {
		u.cancel()
	}
	if aerr := u.answer(); aerr != nil || err != nil {
		u.cancel()
		if aerr == nil {
			aerr = errUpstreamUploadBroken
		}
		return aerr
	}
	u.cancel()
	u.cache.forget(u.rt.url.String())
	return nil
}

// abort ends the request without a complete body, so the origin stores
// nothing (a chunked body lacks its last chunk, a sized one its length).
func (u *httpUpload) abort() {
	u.body.CloseWithError(errUploadCancelled)
	u.cancel()
	u.answer()
}

func (u *httpUpload) summary() []any {
	f := []any{"url", u.rt.url.Redacted()}
	if u.ended && u.status != 0 {
		f = append(f, "status", u.status)
	}
	return append(f, u.fields()...)
}

// newUploadHash is the SHA-256 of the upload log: crypto/sha256 comes
// with TLS in this build (the noproxy build has its own, sha256.go).
func newUploadHash() hash.Hash { return sha256.New() }

// forget drops the cached body of a URL, as after an upload to it.
func (c *cache) forget(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[key]; e != nil {
		c.removeLocked(e)
	}
}

// stallWriter bounds how long one write may wait.
type stallWriter struct {
	w     io.Writer
	timer *time.Timer
	limit time.Duration
}

func (s *stallWriter) Write(p []byte) (int, error) {
	s.timer.Reset(s.limit)
	n, err := s.w.Write(p)
	s.timer.Stop()
	return n, err
}
