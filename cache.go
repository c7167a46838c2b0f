//go:build !noproxy

// The HTTP cache behind proxy mode: URL → stored bytes (origin.go talks to
// the origins). Each downloaded body lives in an anonymous file (O_TMPFILE, or created and unlinked at once where the file
// system refuses that), so nothing is left on disk however the server ends.
// One download runs per URL: transfers that want the same URL share it, a
// transfer ahead of the download waits for its bytes, and once the body is
// complete every reader goes straight to the file by offset, without locks.
// Freshness follows RFC 9111 for a shared cache: a fresh entry is served
// without asking the origin, a stale one is revalidated with its validators.
// With --forward-client the origin is told who asks, and a response that
// varies on that (Vary, RFC 9111 4.1) is stored per client.
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
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

// varySpec is what of a request a response varies on (its Vary field),
// among what varies between our requests: the headers --forward-client
// adds.
type varySpec uint8

const (
	varyForwarded varySpec = 1 << iota
	varyClientMAC
	varyAny // "*": the response is never reused (RFC 9111 4.1)
)

// parseVary reads a response's Vary lines. A name we never send (Cookie,
// Accept-Language) is left out: no request of ours has it, so the stored
// response's absent value matches every later one and the response stays
// shared. So is one we send alike for every client (User-Agent).
func parseVary(lines []string) varySpec {
	var spec varySpec
	for _, line := range lines {
		for more := true; more; {
			var name string
			name, line, more = strings.Cut(line, ",")
			switch name = strings.Trim(name, " \t"); {
			case name == "*":
				spec |= varyAny
			case strings.EqualFold(name, headerForwarded):
				spec |= varyForwarded
			case strings.EqualFold(name, headerClientMAC):
				spec |= varyClientMAC
			}
		}
	}
	return spec
}

// variant is what of who's request a response that varies as spec says
// is stored under, besides the URL: "" for a shared response, and for
// every response without --forward-client (who nil).
func variant(spec varySpec, who *clientIdentity) string {
	var v string
	if who == nil {
		return v
	}
	if spec&varyForwarded != 0 {
		v = who.forwarded()
	}
	if spec&varyClientMAC != 0 {
		v = strings.TrimPrefix(v+" mac="+who.mac, " ")
	}
	return v
}

// entryKey is the cache key of url's response in a variant: the URL
// alone for a shared one. A NUL cannot be in a parsed URL.
func entryKey(url, variant string) string {
	if variant == "" {
		return url
	}
	return url + "\x00" + variant
}

// cacheEntry is one response body, complete or being downloaded.
type cacheEntry struct {
	key      string
	url      string   // key without the variant
	variant  string   // whose response it is, when it varies per client
	vary     varySpec // what it varies on, with --forward-client
	shownURL string   // url without a password, for logs
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

// servesClient reports whether who may be served the response, fetched
// for whoever asked first: a shared one, or one for who itself; never one
// that varies on anything.
func (e *cacheEntry) servesClient(who *clientIdentity) bool {
	return e.vary&varyAny == 0 && e.variant == variant(e.vary, who)
}

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
	end    *transferEnd // the reading transfer's: a wait for bytes ends with it
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
		case <-r.end.done:
			return 0, r.end.why
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
		case <-r.end.done:
			return -1
		}
	}
}

func (r *entryReader) readBlocks(off int64, blocks [][]byte) (int, int, error) {
	return readBlocksAt(r, off, blocks)
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

// cache holds downloaded bodies by URL (without modifiers) and, for a
// response that varies per client, by client too.
type cache struct {
	origin  *origin
	dir     string
	maxSize int64
	log     *slog.Logger
	metrics *metrics
	now     func() time.Time

	mu      sync.Mutex
	entries map[string]*cacheEntry
	pending map[string]*fetchCall
	// variants holds what the last response of a URL varied on, when it
	// did: the key a request looks for. Empty without --forward-client.
	variants map[string]varySpec
	closed   chan struct{}
	closing  sync.Once
}

// newCache makes the cache; it counts into m, and shows m its size.
func newCache(dir string, maxSize int64, log *slog.Logger, m *metrics) *cache {
	c := &cache{
		origin:   newOrigin(log, m),
		dir:      dir,
		maxSize:  maxSize,
		log:      log,
		metrics:  m,
		now:      time.Now,
		entries:  map[string]*cacheEntry{},
		pending:  map[string]*fetchCall{},
		variants: map[string]varySpec{},
		closed:   make(chan struct{}),
	}
	if m != nil {
		m.cacheBytes = c.bytesOnDisk
	}
	return c
}

// bytesOnDisk is what the cached bodies hold.
func (c *cache) bytesOnDisk() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var total int64
	for _, e := range c.entries {
		total += e.bytesOnDisk()
	}
	return total
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
		c.origin.close()
		c.clear()
	})
}

// maxVaryRetries bounds how often a request that waited for another
// client's download, and found it varies per client, looks again; past it
// the request fetches for itself alone.
const maxVaryRetries = 3

// open returns a reader of rt's body for a transfer that ends with end.
// With nocache the download is this transfer's own; otherwise a usable
// entry is shared, or one request to the origin is made for everyone
// asking at the same time. Each open counts as one cache request: a hit
// (a usable entry, or a download another reader started), a miss, a
// revalidation (304), or uncacheable (nocache, or an answer not to store).
// With --forward-client, a request finds the entry for its client's
// variant, as the URL's last response varied; one that waited for another
// client's download and finds that it varies looks again.
func (c *cache) open(rt *remoteTarget, end *transferEnd) (source, error) {
	if rt.nocache {
		return c.openOwn(rt, end)
	}
	url := rt.url.String()
	for range maxVaryRetries {
		c.mu.Lock()
		spec := c.variants[url]
		if spec&varyAny != 0 {
			c.mu.Unlock()
			break
		}
		key := entryKey(url, variant(spec, rt.client))
		if call := c.pending[key]; call != nil {
			call.joined++
			c.mu.Unlock()
			<-call.done
			if call.err == nil && !call.entry.servesClient(rt.client) {
				c.release(call.entry)
				continue
			}
			c.metrics.cacheRequest(cacheHit)
			if call.err != nil {
				return nil, call.err
			}
			return &entryReader{cache: c, entry: call.entry, end: end}, nil
		}
		stored := c.entries[key]
		if stored != nil && stored.usable(c.now()) {
			stored.refs++
			stored.lastUsed = c.now()
			c.mu.Unlock()
			c.metrics.cacheRequest(cacheHit)
			return &entryReader{cache: c, entry: stored, end: end}, nil
		}
		call := &fetchCall{done: make(chan struct{})}
		c.pending[key] = call
		if stored != nil {
			stored.refs++ // kept open for a 304 while the request runs
		}
		c.mu.Unlock()
		return c.fetchShared(rt, end, key, call, stored)
	}
	return c.openOwn(rt, end)
}

// openOwn fetches rt for one transfer alone, and stores nothing.
func (c *cache) openOwn(rt *remoteTarget, end *transferEnd) (source, error) {
	c.metrics.cacheRequest(cacheUncacheable)
	e, err := c.fetch(rt, nil, true)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	e.refs++
	if !rt.nocache {
		c.learnVaryLocked(e.url, e.vary)
	}
	c.mu.Unlock()
	return &entryReader{cache: c, entry: e, end: end}, nil
}

// fetchShared makes the request that call stands for, for key, and
// stores its answer for everyone: under the key its Vary gives, which
// may be another than the one asked for.
func (c *cache) fetchShared(rt *remoteTarget, end *transferEnd, key string, call *fetchCall, stored *cacheEntry) (source, error) {
	e, err := c.fetch(rt, stored, false)
	switch {
	case err == nil && e == stored:
		c.metrics.cacheRequest(cacheRevalidated)
	case err == nil && !e.meta.storable:
		c.metrics.cacheRequest(cacheUncacheable)
	default:
		c.metrics.cacheRequest(cacheMiss)
	}

	c.mu.Lock()
	delete(c.pending, key)
	if err == nil {
		e.refs += 1 + call.joined
		e.lastUsed = c.now()
		if e != stored {
			if stored != nil && c.entries[key] == stored {
				c.removeLocked(stored) // readers of the old body finish on it
			}
			c.learnVaryLocked(e.url, e.vary)
			if e.meta.storable {
				if old := c.entries[e.key]; old != nil {
					c.removeLocked(old)
				}
				c.entries[e.key], e.inCache = e, true
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
	return &entryReader{cache: c, entry: e, end: end}, nil
}

// learnVaryLocked records what url's latest response varied on. When that
// changed, the entries stored by the old rule are found by no request any
// more, and go.
func (c *cache) learnVaryLocked(url string, spec varySpec) {
	if c.variants[url] == spec {
		return
	}
	c.forgetLocked(url)
	if spec == 0 {
		delete(c.variants, url)
	} else {
		c.variants[url] = spec
	}
}

// fetch asks the origin. A 304 refreshes stored and returns it; a 200
// returns a new entry whose download has started, never to be stored when
// own is set. With --forward-client the entry knows what it varies on.
func (c *cache) fetch(rt *remoteTarget, stored *cacheEntry, own bool) (*cacheEntry, error) {
	var validators *cacheEntry
	var etag, lastModified string
	if stored != nil && stored.hasValidators() {
		validators = stored
		etag, lastModified = stored.meta.etag, stored.meta.lastModified
	}
	requested := c.now()
	resp, err := c.origin.get(rt, etag, lastModified)
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
		url:      rt.url.String(),
		shownURL: rt.shown(),
		file:     file,
		progress: make(chan struct{}),
		size:     -1,
		cancel:   resp.cancel,
		header:   http.Header{},
	}
	copyStoredHeaders(e.header, resp.Header)
	e.meta = freshness(e.header, requested, received)
	if rt.client != nil {
		e.vary = parseVary(resp.Header.Values("Vary"))
		e.variant = variant(e.vary, rt.client)
	}
	e.key = entryKey(e.url, e.variant)
	if own || e.vary&varyAny != 0 {
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
		c.log.Debug("evicted", "url", e.shownURL)
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
	// What a URL varied on is kept while some of its entries are.
	if len(c.variants) == 0 {
		return
	}
	kept := map[string]bool{}
	for _, e := range c.entries {
		kept[e.url] = true
	}
	for url := range c.variants {
		if !kept[url] {
			delete(c.variants, url)
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
	clear(c.variants)
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
		attrs := []any{"url", e.shownURL, "bytes", written, "state", state, "freshness", fresh, "readers", e.refs}
		if e.variant != "" {
			attrs = append(attrs, "variant", e.variant)
		}
		c.log.Info("cache entry", attrs...)
	}
}

// anonymousFile creates a file that has no name in dir: it vanishes with
// its last descriptor.
func anonymousFile(dir string) (*os.File, error) { return namelessFile(dir, createAnonymous) }

// namelessFile makes a file with create (createAnonymous, or createHidden
// where O_TMPFILE is refused) and removes a hidden name at once: a cache
// file never needs one.
func namelessFile(dir string, create func(dirfd, flags int, mode uint32, prefix, shown string) (*os.File, string, error)) (*os.File, error) {
	dirfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dirfd)
	f, hidden, err := create(dirfd, unix.O_RDWR, 0o600, ".r-tftpd-cache-", filepath.Join(dir, "(anonymous)"))
	if err == nil && hidden != "" {
		if err = unix.Unlinkat(dirfd, hidden, 0); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, err
}

// put relays an upload to rt as an HTTP PUT; contentLength is -1 when
// unknown. Once the origin has stored it, the cached body is out of date.
func (c *cache) put(rt *remoteTarget, contentLength int64) (uploadSink, error) {
	url := rt.url.String()
	return c.origin.put(rt, contentLength, func() {
		c.mu.Lock()
		c.forgetLocked(url)
		c.mu.Unlock()
	})
}

// forgetLocked drops the cached bodies of a URL, every client's variant.
func (c *cache) forgetLocked(url string) {
	if c.variants[url] == 0 {
		if e := c.entries[url]; e != nil {
			c.removeLocked(e)
		}
		return
	}
	for _, e := range c.entries {
		if e.url == url {
			c.removeLocked(e)
		}
	}
}
