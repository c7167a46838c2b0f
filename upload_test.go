// Uploads into --upload-dir: off by default, exact bytes at every size and
// window, block numbers past 65535, every refusal with its error and nothing
// written, overwrite and file modes, one writer per name, a lost final ACK
// repeated, aborts, timeouts, SIGKILL and a full disk leaving nothing behind,
// an unprivileged server, loss and netascii. Below them, the landing itself:
// the confined open, the hidden temporary name, and the noproxy build's
// SHA-256 for the upload log.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// folderEntries lists a folder, hidden names included.
func folderEntries(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestUploadOffByDefault(t *testing.T) {
	ts := startServer(t, "127.0.0.1")
	_, err := tftpPut(ts.addr, "x", []byte("data"), clientOptions{})
	wantWireError(t, err, codeAccess)
	if names := folderEntries(t, ts.root); len(names) != 0 {
		t.Fatalf("the root holds %v", names)
	}
}

func TestUploadDeliversExactBytes(t *testing.T) {
	sizes := []int{0, 1, 511, 512, 513, 1468 * 3, 100_000}
	for _, listen := range loopbacks {
		ts, dir := startUploadServer(t, listen)
		for _, size := range sizes {
			want := randomBytes(size, int64(size))
			for i, o := range []clientOptions{{}, {blksize: 1468, tsize: true}, {blksize: 1468, windowsize: 16, tsize: true}, {blksize: 700, windowsize: 5}} {
				name := fmt.Sprintf("f%d-%d", size, i)
				if _, err := tftpPut(ts.addr, name, want, o); err != nil {
					t.Fatalf("%s %s %+v: %v", listen, name, o, err)
				}
				assertSame(t, readFile(t, filepath.Join(dir, name)), want)
				if r := ts.result(t); r.err != nil || r.stats.bytes != int64(size) {
					t.Fatalf("server report: %d bytes, %v", r.stats.bytes, r.err)
				}
			}
		}
	}
}

func TestUploadBlockNumbersWrapAround(t *testing.T) {
	ts, dir := startUploadServer(t, "127.0.0.1")
	// 8-byte blocks: 70,000 blocks, past 65535, ending on an exact multiple.
	want := randomBytes(8*70_000, 7)
	for i, window := range []int{1, 16} {
		name := "big" + strconv.Itoa(i)
		if _, err := tftpPut(ts.addr, name, want, clientOptions{blksize: 8, windowsize: window}); err != nil {
			t.Fatal(err)
		}
		assertSame(t, readFile(t, filepath.Join(dir, name)), want)
		ts.result(t)
	}
}

func TestUploadRefusals(t *testing.T) {
	ts, dir := startUploadServer(t, "127.0.0.1", "--upload-max-size", "10K")
	outside := t.TempDir()
	for path, target := range map[string]string{"link": filepath.Join(outside, "victim"), "linkdir": outside} {
		if err := os.Symlink(target, filepath.Join(dir, path)); err != nil {
			t.Fatal(err)
		}
	}
	for _, sub := range []string{"sub", "sub/deeper", "folder"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	old := []byte("the old file\n")
	if err := os.WriteFile(filepath.Join(dir, "exists"), old, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	data := randomBytes(5000, 1)
	cases := []struct {
		name string
		o    clientOptions
		size int
		code uint16
		text string
	}{
		{"exists", clientOptions{}, 5000, codeFileExists, "already exists"},
		{"link", clientOptions{}, 5000, codeAccess, "symlink"},
		{"linkdir/x", clientOptions{}, 5000, codeAccess, "symlink"},
		{"sub/../../x", clientOptions{}, 5000, codeAccess, "outside"},
		{"../x", clientOptions{}, 5000, codeAccess, "outside"},
		{"missing/x", clientOptions{}, 5000, codeNotFound, "folder"},
		{"exists/x", clientOptions{}, 5000, codeNotFound, "folder"},
		{"folder", clientOptions{}, 5000, codeAccess, "directory"},
		{"/", clientOptions{}, 5000, codeAccess, "directory"},
		{"fifo", clientOptions{}, 5000, codeAccess, "regular"},
		{"big-tsize", clientOptions{tsize: true}, 20_000, codeDiskFull, "larger"},
		{"big", clientOptions{}, 20_000, codeDiskFull, "larger"},
		{"big-window", clientOptions{windowsize: 8}, 20_000, codeDiskFull, "larger"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := randomBytes(c.size, 2)
			oack, err := tftpPut(ts.addr, c.name, body, c.o)
			we := wantWireError(t, err, c.code)
			if !strings.Contains(we.msg, c.text) {
				t.Fatalf("ERROR %d %q, want a text with %q", we.code, we.msg, c.text)
			}
			if c.o.tsize && oack != nil {
				t.Fatalf("an OACK (%v) came before the refusal of a too large tsize", oack)
			}
			ts.result(t)
		})
	}
	assertSame(t, readFile(t, filepath.Join(dir, "exists")), old)
	if names := folderEntries(t, outside); len(names) != 0 {
		t.Fatalf("an upload went through a symlink: %v", names)
	}
	if got := strings.Join(folderEntries(t, dir), " "); got != "exists fifo folder link linkdir sub" {
		t.Fatalf("the upload folder holds %s", got)
	}
	// An absolute name is taken below the upload folder.
	for _, name := range []string{"/sub/abs", "sub//./deeper/x"} {
		if _, err := tftpPut(ts.addr, name, data, clientOptions{}); err != nil {
			t.Fatal(err)
		}
		ts.result(t)
	}
	assertSame(t, readFile(t, filepath.Join(dir, "sub/abs")), data)
	assertSame(t, readFile(t, filepath.Join(dir, "sub/deeper/x")), data)
}

func TestUploadOverwrite(t *testing.T) {
	ts, dir := startUploadServer(t, "127.0.0.1", "--upload-overwrite", "--upload-mode", "0640")
	if err := os.WriteFile(filepath.Join(dir, "config"), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		want := randomBytes(3000+i, int64(i))
		for _, name := range []string{"config", "new" + strconv.Itoa(i)} {
			if _, err := tftpPut(ts.addr, name, want, clientOptions{blksize: 1024}); err != nil {
				t.Fatal(err)
			}
			ts.result(t)
			assertSame(t, readFile(t, filepath.Join(dir, name)), want)
			if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode().Perm() != 0o640 {
				t.Fatalf("%s: mode %v (%v), want 0640", name, fi.Mode(), err)
			}
		}
	}
	if got := strings.Join(folderEntries(t, dir), " "); got != "config new0 new1 new2" {
		t.Fatalf("the upload folder holds %s", got)
	}
}

func TestUploadDefaultModeFollowsUmask(t *testing.T) {
	ts, dir := startUploadServer(t, "127.0.0.1")
	if _, err := tftpPut(ts.addr, "f", []byte("x"), clientOptions{}); err != nil {
		t.Fatal(err)
	}
	ts.result(t)
	umask := syscall.Umask(0o22)
	syscall.Umask(umask)
	if fi, err := os.Stat(filepath.Join(dir, "f")); err != nil || fi.Mode().Perm() != 0o644&^os.FileMode(umask) {
		t.Fatalf("mode %v (%v), want 0644 less the umask %03o", fi.Mode(), err, umask)
	}
}

// TestUploadSameNameTwiceAtOnce: while one upload of a name runs, a second
// is refused at once; after it, the name is free again.
func TestUploadSameNameTwiceAtOnce(t *testing.T) {
	ts, dir := startUploadServer(t, "127.0.0.1", "--upload-overwrite")
	first := startLockstepPut(t, ts.addr, "same")
	_, err := tftpPut(ts.addr, "same", []byte("second"), clientOptions{})
	if we := wantWireError(t, err, codeUndefined); !strings.Contains(we.msg, "being written") {
		t.Fatalf("second upload got %q", we.msg)
	}
	ts.result(t)
	want := first.finish(t)
	ts.result(t)
	assertSame(t, readFile(t, filepath.Join(dir, "same")), want)
	if _, err := tftpPut(ts.addr, "same", []byte("third"), clientOptions{}); err != nil {
		t.Fatal(err)
	}
	ts.result(t)
	assertSame(t, readFile(t, filepath.Join(dir, "same")), []byte("third"))
}

// TestUploadRepeatsLostFinalAck: a client whose final ACK was lost resends
// its final block after its own timeout, after the upload was reported, and
// gets the ACK again.
func TestUploadRepeatsLostFinalAck(t *testing.T) {
	ts, dir := startUploadServer(t, "127.0.0.1")
	c := newRawClient(t, ts.addr)
	c.send((clientOptions{}).requestPacket(opWRQ, "f"))
	c.expectAck(0)
	c.send([]byte{0, opDATA, 0, 1, 'a', 'b', 'c'})
	c.expectAck(1)
	if r := ts.result(t); r.err != nil {
		t.Fatal(r.err)
	}
	c.send([]byte{0, opDATA, 0, 1, 'a', 'b', 'c'})
	c.expectAck(1)
	assertSame(t, readFile(t, filepath.Join(dir, "f")), []byte("abc"))
}

// TestUploadAbortLeavesNothing: a client ERROR, a silent client and a
// shutdown each end an upload with nothing on disk.
func TestUploadAbortLeavesNothing(t *testing.T) {
	ts, dir := startUploadServer(t, "127.0.0.1", "--retries", "2")
	p := startLockstepPut(t, ts.addr, "aborted")
	p.put.send([]byte{0, opERROR, 0, 0, 'n', 'o', 0})
	if r := ts.result(t); !errors.Is(r.err, errClientAbort) {
		t.Fatalf("server: %v, want the client's abort", r.err)
	}
	startLockstepPut(t, ts.addr, "silent")
	if r := ts.result(t); !errors.Is(r.err, errTimeout) {
		t.Fatalf("server: %v, want a timeout", r.err)
	}
	startLockstepPut(t, ts.addr, "shutdown")
	ts.shutdown(0)
	if r := ts.result(t); !errors.Is(r.err, errShutdown) {
		t.Fatalf("server: %v, want a shutdown", r.err)
	}
	if names := folderEntries(t, dir); len(names) != 0 {
		t.Fatalf("the upload folder holds %v", names)
	}
}

// TestUploadAsUnprivilegedUser runs the server binary as nobody, as a
// service with DynamicUser would: without CAP_DAC_READ_SEARCH an O_TMPFILE
// is linked through its /proc/self/fd entry.
func TestUploadAsUnprivilegedUser(t *testing.T) {
	setpriv, err := exec.LookPath("setpriv")
	if err != nil || os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root and setpriv (CI=true)")
		}
		t.Skip("needs root and setpriv")
	}
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "r-tftpd")
	if err := os.WriteFile(bin, readFile(t, serverBinary), 0o755); err != nil {
		t.Fatal(err)
	}
	srv := startBinary(t, exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
		bin, "-l", "127.0.0.1", "-p", "0", "-r", dir, "--upload-dir", dir, "--upload-overwrite"))
	want := randomBytes(100_000, 12)
	for _, name := range []string{"backup", "backup"} { // new, then replaced
		_, err := tftpPut(srv.addr, name, want, clientOptions{blksize: 1024, windowsize: 4})
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(want)
		srv.awaitLog(t, "sha256="+hex.EncodeToString(sum[:]))
		assertSame(t, readFile(t, filepath.Join(dir, name)), want)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, "backup"), &st); err != nil || st.Uid != 65534 {
		t.Fatalf("the upload belongs to uid %d (%v), want 65534", st.Uid, err)
	}
}

// TestUploadKilledServerLeavesNothing kills the server with SIGKILL in the
// middle of an upload: the anonymous file goes with the process.
func TestUploadKilledServerLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	srv := startBinary(t, exec.Command(serverBinary, "-l", "127.0.0.1", "-p", "0", "-r", t.TempDir(), "--upload-dir", dir))
	startLockstepPut(t, srv.addr, "killed")
	if err := srv.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	srv.wait()
	if names := folderEntries(t, dir); len(names) != 0 {
		t.Fatalf("the upload folder holds %v after SIGKILL", names)
	}
}

func TestUploadThroughLossyLink(t *testing.T) {
	for _, listen := range loopbacks {
		ts, dir := startUploadServer(t, listen, "-t", "0.03", "--retries", "40")
		want := randomBytes(150_000, 9)
		for _, window := range []int{1, 8, 16} {
			t.Run(fmt.Sprintf("%s/window %d", listen, window), func(t *testing.T) {
				relay := startRelay(t, ts.addr, impairment{loss: 0.10, duplicate: 0.02, reorder: 0.02, seed: int64(window)})
				name := "lossy-" + strconv.Itoa(window)
				if _, err := tftpPut(relay.addr(), name, want, clientOptions{blksize: 1024, windowsize: window, retry: 30 * time.Millisecond, maxRetries: 200}); err != nil {
					t.Fatal(err)
				}
				r := ts.result(t)
				t.Logf("%d of %d impairments were drops; server: %d retransmitted ACKs, %d timeouts", relay.dropped.Load(), relay.impairments(), r.stats.retransmits, r.stats.timeouts)
				assertSame(t, readFile(t, filepath.Join(dir, name)), want)
			})
		}
	}
}

func TestUploadNetascii(t *testing.T) {
	ts, dir := startUploadServer(t, "127.0.0.1")
	local := []byte("line one\nbare CR \r here\n\n\r\rend\r")
	wire := []byte("line one\r\nbare CR \r\x00 here\r\n\r\n\r\x00\r\x00end\r\x00")
	for _, blksize := range []int{0, 8, 9, 10} {
		name := "text" + strconv.Itoa(blksize)
		if _, err := tftpPut(ts.addr, name, wire, clientOptions{netascii: true, blksize: blksize, windowsize: 2}); err != nil {
			t.Fatal(err)
		}
		ts.result(t)
		assertSame(t, readFile(t, filepath.Join(dir, name)), local)
	}
}

// TestSmallSHA256MatchesStdlib holds the noproxy build's SHA-256 to
// crypto/sha256 and to FIPS 180-4's examples, whatever the write sizes.
func TestSmallSHA256MatchesStdlib(t *testing.T) {
	for msg, want := range map[string]string{
		"":    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		"abc": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
		"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq": "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
	} {
		h := newSmallSHA256()
		h.Write([]byte(msg))
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			t.Fatalf("%q: %s, want %s", msg, got, want)
		}
	}
	data := randomBytes(10_000, 3)
	for _, size := range []int{0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 10_000} {
		for _, step := range []int{1, 7, 64, 100, 10_000} {
			h := newSmallSHA256()
			for off := 0; off < size; off += step {
				h.Write(data[off:min(off+step, size)])
			}
			if want := sha256.Sum256(data[:size]); !bytes.Equal(h.Sum(nil), want[:]) {
				t.Fatalf("%d bytes written %d at a time: digest differs from crypto/sha256", size, step)
			}
		}
	}
}

// TestConfinedOpenRefusesSymlinks runs both ways of opening an upload's
// folder, openat2 and the O_NOFOLLOW walk, over the same tree.
func TestConfinedOpenRefusesSymlinks(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"a", "a/b"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink("b", filepath.Join(root, "a/inside"))
	os.Symlink(t.TempDir(), filepath.Join(root, "out"))
	os.WriteFile(filepath.Join(root, "file"), nil, 0o644)
	rootFd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rootFd)
	for name, open := range map[string]func(int, string) (int, error){"openat2": openBeneath, "walk": walkBeneath} {
		for rel, want := range map[string]error{
			"": nil, "a": nil, "a/b": nil,
			"a/inside": errUploadSymlink, "out": errUploadSymlink, "a/inside/x": errUploadSymlink,
			"missing": errNoFolder, "file": errNoFolder, "file/x": errNoFolder,
		} {
			fd, err := open(rootFd, rel)
			if errors.Is(err, unix.ENOSYS) {
				t.Skipf("%s: not supported by this kernel", name)
			}
			if got := confinedError(err); got != want {
				t.Errorf("%s %q: %v, want %v", name, rel, got, want)
			}
			if err == nil {
				unix.Close(fd)
			}
		}
	}
}

// TestHiddenTempFallback runs an upload through the temporary name used
// where O_TMPFILE is refused: committed it has its name, aborted it is gone.
func TestHiddenTempFallback(t *testing.T) {
	for _, overwrite := range []bool{false, true} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "old"), []byte("old"), 0o644)
		cfg := &config{uploadDir: dir, uploadMaxSize: 1 << 20, uploadMode: -1, uploadOverwrite: overwrite}
		table := &uploadTable{}
		for _, name := range []string{"new", "old", "aborted"} {
			u, err := createUpload(cfg, table, name, -1)
			if errors.Is(err, errFileExists) && !overwrite && name == "old" {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			u.file.Close()
			if u.file, u.tmpName, err = createHidden(u.dir, unix.O_WRONLY, 0o644, hiddenTempPrefix, u.shown); err != nil {
				t.Fatal(err)
			}
			u.buf.Reset(u.file)
			if err := u.write([]byte("body of " + name)); err != nil {
				t.Fatal(err)
			}
			if name == "aborted" {
				u.abort()
				continue
			}
			if err := u.commit(); err != nil {
				t.Fatal(err)
			}
			if got := string(readFile(t, filepath.Join(dir, name))); got != "body of "+name {
				t.Fatalf("%s holds %q", name, got)
			}
		}
		if got := strings.Join(folderEntries(t, dir), " "); got != "new old" {
			t.Fatalf("overwrite %v: the folder holds %s", overwrite, got)
		}
	}
}

// TestUploadNetasciiWithTftpHPA: tftp-hpa's ascii mode sends text as
// netascii; the folder gets the original lines back.
func TestUploadNetasciiWithTftpHPA(t *testing.T) {
	bin := needClient(t, "tftp")
	ts, dir := startUploadServer(t, "127.0.0.1")
	var text bytes.Buffer
	for i := 0; text.Len() < 50_000; i++ {
		fmt.Fprintf(&text, "interface GigabitEthernet0/%d\n description uplink\r\n!\n", i)
	}
	local := filepath.Join(t.TempDir(), "running-config")
	os.WriteFile(local, text.Bytes(), 0o644)
	out, err := exec.Command(bin, "-m", "netascii", "127.0.0.1", strconv.Itoa(int(ts.addr.Port())), "-c", "put", local, "cfg").CombinedOutput()
	if err != nil {
		t.Fatalf("tftp: %v\n%s", err, out)
	}
	ts.result(t)
	assertSame(t, readFile(t, filepath.Join(dir, "cfg")), text.Bytes())
}

// TestUploadDiskFull runs the server binary in a mount namespace of its
// own, with a 1 MiB tmpfs as upload folder and root: a tsize above the
// free space is refused before any data, an upload without tsize that
// fills the disk gets ERROR 3, and nothing of either is left.
func TestUploadDiskFull(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil || os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root and unshare for a mount namespace (CI=true)")
		}
		t.Skip("needs root and unshare for a mount namespace")
	}
	dir := t.TempDir()
	script := `mount -t tmpfs -o size=1m tmpfs "$1" && exec "$2" -l 127.0.0.1 -p 0 -r "$1" --upload-dir "$1" --log-level debug`
	srv := startBinary(t, exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", dir, serverBinary))
	big := randomBytes(2<<20, 3)
	_, err := tftpPut(srv.addr, "tsize", big, clientOptions{tsize: true})
	if we := wantWireError(t, err, codeDiskFull); !strings.Contains(we.msg, "disk full") {
		t.Fatalf("got %q", we.msg)
	}
	_, err = tftpPut(srv.addr, "no-tsize", big, clientOptions{blksize: 1024, windowsize: 8})
	wantWireError(t, err, codeDiskFull)
	srv.awaitLog(t, "file=no-tsize")
	// -r: the server's root too, which differs from the namespace's when
	// the tests run chrooted (make ci-pristine).
	nsenter := exec.Command("nsenter", "-t", strconv.Itoa(srv.cmd.Process.Pid), "-m", "-r", "ls", "-A", dir)
	if out, err := nsenter.CombinedOutput(); err != nil || len(out) != 0 {
		t.Fatalf("the full tmpfs holds %q (%v)", out, err)
	}
	if names := folderEntries(t, dir); len(names) != 0 {
		t.Fatalf("the tmpfs leaked out of its namespace: %v", names)
	}
	small := randomBytes(100_000, 4)
	if _, err := tftpPut(srv.addr, "fits", small, clientOptions{tsize: true}); err != nil {
		t.Fatal(err)
	}
	res, err := tftpGet(srv.addr, "fits", clientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, res.data, small)
}

// BenchmarkUpload receives uploads on loopback and reports the server's
// allocations per DATA packet: the receive path allocates none.
func BenchmarkUpload(b *testing.B) {
	for _, shape := range [][2]int{{512, 1}, {1468, 1}, {1468, 16}} {
		b.Run(fmt.Sprintf("blksize=%d/window=%d", shape[0], shape[1]), func(b *testing.B) {
			ts, _ := startUploadServer(b, "127.0.0.1", "--log-level", "warn", "--upload-overwrite")
			const size = 2 << 20
			data := randomBytes(size, 1)
			b.SetBytes(size)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			for range b.N {
				if _, err := tftpPut(ts.addr, "bench", data, clientOptions{blksize: shape[0], windowsize: shape[1]}); err != nil {
					b.Fatal(err)
				}
				// The server lingers for a repeat of the final block.
				b.StopTimer()
				<-ts.results
				b.StartTimer()
			}
			b.StopTimer()
			runtime.ReadMemStats(&after)
			// The client's and the per-transfer allocations are counted too.
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(b.N*(size/shape[0]+1)), "allocs/pkt")
		})
	}
}
