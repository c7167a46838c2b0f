package main

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// TestReadAheadServesTheFileAsPreadvWould reads a file the way a lockstep
// sender and a windowed one do, in order, with resends of older blocks and
// jumps, and compares every block with the file's bytes at that offset. A
// file smaller than the read-ahead buffer gets a buffer no larger than it.
func TestReadAheadServesTheFileAsPreadvWould(t *testing.T) {
	for _, size := range []int{0, 1, 1000, 3000, readAheadSize - 1, readAheadSize, 3*readAheadSize + 777} {
		content := make([]byte, size)
		rng := rand.New(rand.NewPCG(uint64(size), 1))
		for i := range content {
			content[i] = byte(rng.Uint32())
		}
		path := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(path, content, 0o644); err != nil {
			t.Fatal(err)
		}
		src, err := openLocal(path)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		for _, blksize := range []int{512, 1468} {
			blocks := make([][]byte, 16)
			for i := range blocks {
				blocks[i] = make([]byte, blksize)
			}
			nblocks := size/blksize + 1
			// In order, then 200 random windows of 1 to 16 blocks
			// anywhere in the file and past its end.
			var reads [][2]int
			for k := range nblocks {
				reads = append(reads, [2]int{k, 1})
			}
			for range 200 {
				reads = append(reads, [2]int{rng.IntN(nblocks + 2), 1 + rng.IntN(16)})
			}
			for _, r := range reads {
				off := int64(r[0]) * int64(blksize)
				n, _, err := src.readBlocks(off, blocks[:r[1]])
				if err != nil {
					t.Fatal(err)
				}
				want := content[min(int(off), size):min(int(off)+r[1]*blksize, size)]
				got := bytes.Join(blocks[:r[1]], nil)[:n]
				if !bytes.Equal(got, want) {
					t.Fatalf("size %d, blksize %d: %d blocks at %d gave %d bytes, want %d (equal: %v)",
						size, blksize, r[1], off, n, len(want), bytes.Equal(got[:min(len(got), len(want))], want[:min(len(got), len(want))]))
				}
			}
		}
		if ahead := src.(*fileSource).ahead; cap(ahead) > min(readAheadSize, max(size, 1)) {
			t.Fatalf("size %d: a read-ahead buffer of %d bytes, want at most %d", size, cap(ahead), min(readAheadSize, max(size, 1)))
		}
	}
}
