//go:build !noproxy

// Talking HTTP to origins: the one client every request shares, the GET
// the cache downloads with, the PUT an upload is relayed as, and the one
// table that turns an origin's status into what the TFTP client is told.
// Waiting is bounded everywhere: connecting, the headers, and a body that
// stops moving in either direction.
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
	"sync"
	"time"
)

// Upstream timeouts: connecting and waiting for headers are bounded, and so
// is a body that stops moving; a slow but moving body is not.
const (
	upstreamConnectTimeout = 10 * time.Second
	upstreamHeaderTimeout  = 30 * time.Second
	upstreamStallTimeout   = 30 * time.Second
)

// origin is the HTTP side of proxy mode.
type origin struct {
	client  *http.Client
	log     *slog.Logger
	metrics *metrics // counts every request by method and status
	// downloads is the context of every GET: close ends those still
	// waiting, so a shutdown does not wait for a slow origin.
	downloads       context.Context
	cancelDownloads context.CancelFunc
}

// newOrigin makes the one client every request shares. Go's defaults give
// the rest: at most 10 redirects, HTTP_PROXY/HTTPS_PROXY/NO_PROXY, the
// system's CA roots and SSL_CERT_FILE, and transparent gzip unless a request
// asks for an encoding itself.
func newOrigin(log *slog.Logger, m *metrics) *origin {
	dialer := &net.Dialer{Timeout: upstreamConnectTimeout, KeepAlive: 30 * time.Second}
	downloads, cancel := context.WithCancel(context.Background())
	return &origin{
		client: &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           dialer.DialContext,
			TLSHandshakeTimeout:   upstreamConnectTimeout,
			ResponseHeaderTimeout: upstreamHeaderTimeout,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   4,
			ForceAttemptHTTP2:     true,
		}},
		log:             log,
		metrics:         m,
		downloads:       downloads,
		cancelDownloads: cancel,
	}
}

// close ends every GET still running or waiting.
func (o *origin) close() { o.cancelDownloads() }

// statusError maps an origin's answer to a GET or a PUT to what the TFTP
// client is told.
func statusError(method string, status int) error {
	switch {
	case method == http.MethodGet && (status == http.StatusNotFound || status == http.StatusGone):
		return errNotFound
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		if method == http.MethodPut {
			return errUpstreamRefusedUpload
		}
		return errAccess
	case method == http.MethodPut && (status == http.StatusRequestEntityTooLarge || status == http.StatusInsufficientStorage):
		return errUpstreamFull
	}
	return newWireError(codeUndefined, "upstream answered HTTP %d", status)
}

// The request headers that tell an origin who asks (--forward-client).
const (
	headerForwarded = "Forwarded"
	headerClientMAC = "X-TFTP-Client-MAC"
)

// tell puts who asks into an origin request's headers: RFC 7239's
// Forwarded, and the MAC address, when known, as the summary line and the
// hook show it (lowercase, colon-separated). A nil identity adds nothing.
func (who *clientIdentity) tell(h http.Header) {
	if who == nil {
		return
	}
	h.Set(headerForwarded, who.forwarded())
	if who.mac != "" {
		h.Set(headerClientMAC, who.mac)
	}
}

// forwarded is the Forwarded value for the client: an IPv4 address as it
// is, an IPv6 one bracketed and quoted (RFC 7239 6: ":" is not allowed in a
// token). A zone is dropped: it means nothing to the origin.
func (who *clientIdentity) forwarded() string {
	if who.addr.Is4() {
		return "for=" + who.addr.String()
	}
	return `for="[` + who.addr.WithZone("").String() + `]"`
}

// upstreamResponse is a response whose body is being read under a stall
// bound; cancel ends the request.
type upstreamResponse struct {
	*http.Response
	body   io.Reader
	cancel context.CancelFunc
}

// get sends a GET for rt, conditional on a stored body's validators when
// there are any. A status other than 200 or 304 becomes the error the TFTP
// client is told; the body is then closed.
func (o *origin) get(rt *remoteTarget, etag, lastModified string) (*upstreamResponse, error) {
	ctx, cancel := context.WithCancel(o.downloads)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rt.url.String(), nil)
	if err != nil {
		cancel()
		return nil, errBadProxyURL
	}
	req.Header.Set("User-Agent", "r-tftpd/"+version)
	rt.client.tell(req.Header)
	if rt.nocompress {
		req.Header.Set("Accept-Encoding", "identity")
	}
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	if lastModified != "" {
		req.Header.Set("If-Modified-Since", lastModified)
	}
	resp, err := o.client.Do(req)
	if err != nil {
		cancel()
		o.metrics.originRequest(http.MethodGet, 0)
		o.log.Warn("upstream request failed", "url", rt.shown(), "err", logText(err.Error()))
		return nil, errUpstreamDown
	}
	o.metrics.originRequest(http.MethodGet, resp.StatusCode)
	switch resp.StatusCode {
	case http.StatusOK, http.StatusNotModified:
	default:
		resp.Body.Close()
		cancel()
		o.log.Warn("upstream refused", "url", rt.shown(), "status", resp.Status)
		return nil, statusError(http.MethodGet, resp.StatusCode)
	}
	if enc := resp.Header.Get("Content-Encoding"); !resp.Uncompressed && enc != "" && enc != "identity" {
		resp.Body.Close()
		cancel()
		o.log.Warn("upstream sent an encoding that was not asked for", "url", rt.shown(), "encoding", enc)
		return nil, errUpstreamBroken
	}
	return &upstreamResponse{Response: resp, body: newStallReader(resp.Body, cancel, upstreamStallTimeout), cancel: cancel}, nil
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

// errUploadCancelled is what an aborted upload's request body ends with.
var errUploadCancelled = errors.New("upload cancelled")

// httpUpload streams an upload to its URL while the TFTP transfer runs.
// The request goes out at once: with a Content-Length when the client
// announced the size, chunked otherwise. Blocks pass through a buffer into
// a pipe that the HTTP client reads as the request body.
type httpUpload struct {
	origin   *origin
	rt       *remoteTarget
	onStored func() // after a 2xx
	body     *io.PipeWriter
	buf      *bufio.Writer
	cancel   context.CancelFunc
	result   chan error // the origin's answer, mapped to a wire error
	status   int        // the origin's status, for the log; guarded by result
	err      error      // the answer once received
	ended    bool
}

// put starts the PUT of an upload to rt; contentLength is -1 when unknown.
func (o *origin) put(rt *remoteTarget, contentLength int64, onStored func()) (*httpUpload, error) {
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
	rt.client.tell(req.Header)
	u := &httpUpload{
		origin:   o,
		rt:       rt,
		onStored: onStored,
		body:     pw,
		cancel:   cancel,
		result:   make(chan error, 1),
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
	resp, err := u.origin.client.Do(req)
	if err != nil {
		u.origin.metrics.originRequest(http.MethodPut, 0)
		u.origin.log.Warn("upload to upstream failed", "url", u.rt.url.Redacted(), "err", err)
		return errUpstreamUploadBroken
	}
	u.origin.metrics.originRequest(http.MethodPut, resp.StatusCode)
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	u.status = resp.StatusCode
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	err = statusError(http.MethodPut, resp.StatusCode)
	if err != errUpstreamRefusedUpload && err != errUpstreamFull {
		u.origin.log.Warn("upstream refused the upload", "url", u.rt.url.Redacted(), "status", resp.Status)
	}
	return err
}

// answer waits for the end of the request.
func (u *httpUpload) answer() error {
	if !u.ended {
		u.err, u.ended = <-u.result, true
	}
	return u.err
}

func (u *httpUpload) write(p []byte) error {
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
// only after a 2xx.
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
	u.onStored()
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
	return f
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

// newUploadHash is the SHA-256 of the upload log: crypto/sha256 comes
// with TLS in this build (the noproxy build has its own, sha256.go).
func newUploadHash() hash.Hash { return sha256.New() }
