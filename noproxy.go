//go:build noproxy

// A build without proxy support (go build -tags noproxy) for the smallest
// routers: net/http and TLS stay out of the binary. URL links and a URL
// --fallback are still recognised, so a client asking below one is told
// this build cannot follow it instead of getting "file not found".
package main

import (
	"hash"
	"log/slog"
)

const proxySupport = false

// cache stands in for the HTTP cache: it has nothing to fetch with.
type cache struct{ log *slog.Logger }

func newCache(dir string, maxSize int64, log *slog.Logger, m *metrics) *cache {
	return &cache{log: log}
}

func (c *cache) run()   {}
func (c *cache) close() {}
func (c *cache) dump()  { c.log.Info("cache", "entries", 0, "note", "built without proxy support") }
func (c *cache) clear() {}

func (c *cache) open(rt *remoteTarget, end *transferEnd) (source, error) {
	c.log.Warn("a URL was requested, but this build has no proxy support", "url", rt.shown())
	return nil, errNoProxySupport
}

func (c *cache) put(rt *remoteTarget, contentLength int64) (uploadSink, error) {
	c.log.Warn("an upload to a URL was requested, but this build has no proxy support", "url", rt.url.Redacted())
	return nil, errNoProxyUpload
}

// newUploadHash is the SHA-256 of the upload log; see sha256.go.
func newUploadHash() hash.Hash { return newSmallSHA256() }
