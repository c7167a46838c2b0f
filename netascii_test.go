// Netascii both ways: a file served in netascii mode reaches the client
// with CR LF and CR NUL line ends, whatever order its blocks are read or
// resent in, and the decoder that lands uploads undoes the encoding
// exactly, never growing a block whatever a client sends.
package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestNetasciiConvertsLineEnds(t *testing.T) {
	ts := startServer(t, "127.0.0.1")
	var raw, want bytes.Buffer
	for i := range 3000 {
		line := "line " + strconv.Itoa(i)
		switch i % 4 {
		case 0:
			raw.WriteString(line + "\n")
			want.WriteString(line + "\r\n")
		case 1:
			raw.WriteString(line + "\r")
			want.WriteString(line + "\r\x00")
		case 2:
			raw.WriteString(line + "\r\n")
			want.WriteString(line + "\r\x00\r\n")
		default:
			raw.WriteString(line)
			want.WriteString(line)
		}
	}
	if err := os.WriteFile(filepath.Join(ts.root, "text"), raw.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, o := range []clientOptions{{netascii: true}, {netascii: true, blksize: 8, windowsize: 4, tsize: true}} {
		res, err := tftpGet(ts.addr, "text", o)
		if err != nil {
			t.Fatal(err)
		}
		assertSame(t, res.data, want.Bytes())
		if o.tsize && res.oack["tsize"] != strconv.Itoa(want.Len()) {
			t.Fatalf("tsize %s, want %d", res.oack["tsize"], want.Len())
		}
	}
}

func TestNetasciiResendFromAnyOffset(t *testing.T) {
	raw := []byte("a\nb\r\n\rc\n\n")
	want := []byte("a\r\nb\r\x00\r\n\r\x00c\r\n\r\n")
	src := newNetascii(fileSourceFor(t, raw))
	for blk := 1; blk <= 5; blk++ {
		// Read blocks in a scrambled order: resends jump backwards.
		for _, k := range []int{blk, 1, blk} {
			p := make([]byte, 3)
			n, _ := src.ReadAt(p, int64(k-1)*3)
			end := min(len(want), k*3)
			if start := (k - 1) * 3; start < len(want) && !bytes.Equal(p[:n], want[start:end]) {
				t.Fatalf("block %d: %q, want %q", k, p[:n], want[start:end])
			}
		}
	}
	if src.Size() != int64(len(want)) {
		t.Fatalf("size %d, want %d", src.Size(), len(want))
	}
}

func fileSourceFor(t *testing.T, data []byte) source {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := openLocal(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

func TestNetasciiDecoderUndoesEncoding(t *testing.T) {
	for _, text := range []string{"", "\r", "\n", "a\r\nb", "\r\r\n\n", strings.Repeat("x\r\n\ry", 300)} {
		encoded := make([]byte, 0)
		src := newNetascii(fileSourceFor(t, []byte(text)))
		buf := make([]byte, 7)
		for off := int64(0); ; {
			n, err := src.ReadAt(buf, off)
			encoded = append(encoded, buf[:n]...)
			off += int64(n)
			if err != nil || n == 0 {
				break
			}
		}
		for _, split := range []int{1, 2, 3, 512} {
			var d netasciiDecoder
			var got []byte
			out := make([]byte, split+1)
			for off := 0; off < len(encoded); off += split {
				got = append(got, d.decode(out, encoded[off:min(off+split, len(encoded))])...)
			}
			got = append(got, d.finish(out)...)
			if string(got) != text {
				t.Fatalf("%q split by %d: decoded %q", text, split, got)
			}
		}
	}
}

// FuzzNetasciiDecode: whatever a client sends, the decoder never writes
// more than one byte past its input and never grows a block.
func FuzzNetasciiDecode(f *testing.F) {
	for _, seed := range []string{"", "\r", "\r\n", "\r\x00", "a\rb", "\r\r\r"} {
		f.Add([]byte(seed), 3)
	}
	f.Fuzz(func(t *testing.T, in []byte, split int) {
		if split <= 0 || split > 1000 {
			return
		}
		var d netasciiDecoder
		out := make([]byte, split+1)
		total := 0
		for off := 0; off < len(in); off += split {
			block := in[off:min(off+split, len(in))]
			got := d.decode(out, block)
			if len(got) > len(block)+1 || cap(got) != cap(out) {
				t.Fatalf("decoded %d bytes from %d (or reallocated)", len(got), len(block))
			}
			total += len(got)
		}
		total += len(d.finish(out))
		if total > len(in) {
			t.Fatalf("decoded %d bytes from %d", total, len(in))
		}
	})
}
