// netascii (RFC 764 line ends as RFC 1350 uses them): a source wrapped to
// serve a file converted on the fly, and an upload's sink wrapped to store
// it converted back. The engines never see the conversion.
package main

import (
	"bytes"
	"io"
)

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

func (s *netasciiSource) readBlocks(off int64, blocks [][]byte) (int, int, error) {
	return readBlocksAt(s, off, blocks)
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

// netasciiSink stores a netascii upload converted back into local text.
type netasciiSink struct {
	uploadSink
	decoder netasciiDecoder
	decoded []byte
}

func newNetasciiSink(sink uploadSink, blksize int) *netasciiSink {
	return &netasciiSink{uploadSink: sink, decoded: make([]byte, blksize+1)}
}

func (s *netasciiSink) write(p []byte) error {
	return s.uploadSink.write(s.decoder.decode(s.decoded, p))
}

// commit stores what the decoder still holds (a final CR) first.
func (s *netasciiSink) commit() error {
	if err := s.uploadSink.write(s.decoder.finish(s.decoded)); err != nil {
		return err
	}
	return s.uploadSink.commit()
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
