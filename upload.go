// How an upload (WRQ) lands: into --upload-dir, atomic and confined, and
// counted and hashed on its way, whether to a file or to a URL (origin.go's
// PUT relay), or nowhere (--wrq-devnull). A file upload is written to an anonymous O_TMPFILE in the target folder
// (a hidden temporary name where the file system refuses that), fsynced,
// and only after its final block linked into place: linkat for a new name,
// so that a race for the same name cannot clobber it, renameat for an
// allowed overwrite; then the folder is fsynced. A failed, aborted or killed
// upload leaves nothing behind, and a reader sees the old file or the whole
// new one. No folder on the way and no final name is ever a symlink that is
// followed.
package main

import (
	"bufio"
	"encoding/hex"
	"errors"
	"hash"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// digestSink counts and hashes what an upload stores on its way to the
// sink, and enforces --upload-max-size on uploads without tsize.
type digestSink struct {
	uploadSink
	hash  hash.Hash
	n     int64
	limit int64
}

func newDigestSink(sink uploadSink, limit int64) *digestSink {
	return &digestSink{uploadSink: sink, hash: newUploadHash(), limit: limit}
}

func (d *digestSink) write(p []byte) error {
	if d.n += int64(len(p)); d.n > d.limit {
		return errUploadTooLarge
	}
	d.hash.Write(p)
	return d.uploadSink.write(p)
}

func (d *digestSink) summary() []any {
	return append(d.uploadSink.summary(), "stored_bytes", d.n, "sha256", hex.EncodeToString(d.hash.Sum(nil)))
}

// discardSink is --wrq-devnull: it takes everything and keeps nothing.
type discardSink struct{}

func (discardSink) write([]byte) error { return nil }
func (discardSink) commit() error      { return nil }
func (discardSink) abort()             {}
func (discardSink) summary() []any     { return []any{"stored", "discarded"} }

// uploadTable holds the names being written, so that a second upload of a
// name is refused at once instead of racing the first.
type uploadTable struct {
	mu    sync.Mutex
	names map[string]bool
}

func (t *uploadTable) claim(name string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.names == nil {
		t.names = map[string]bool{}
	}
	if t.names[name] {
		return false
	}
	t.names[name] = true
	return true
}

func (t *uploadTable) release(name string) {
	t.mu.Lock()
	delete(t.names, name)
	t.mu.Unlock()
}

// fileUpload is an upload into --upload-dir being written.
type fileUpload struct {
	table     *uploadTable
	key       string // the name relative to the upload folder
	shown     string // the final path, for the log
	dir       int    // the target folder
	name      string // the final name in dir
	file      *os.File
	tmpName   string // the hidden temporary name; "" for an O_TMPFILE
	buf       *bufio.Writer
	overwrite bool
	finished  bool
}

// uploadBuffer batches small blocks into fewer writes.
const uploadBuffer = 64 << 10

// splitFolder splits a cleaned request path into the folder an upload
// lands in ("" for the upload folder itself) and the file's name.
func splitFolder(rel string) (folder, name string) {
	if i := strings.LastIndexByte(rel, '/'); i >= 0 {
		return rel[:i], rel[i+1:]
	}
	return "", rel
}

// createUpload checks the name, claims it and opens the temporary file in
// its folder.
func createUpload(cfg *config, table *uploadTable, requested string, size int64) (sink *fileUpload, err error) {
	rel, err := cleanRequestPath(requested)
	if err != nil {
		return nil, err
	}
	if rel == "" {
		return nil, errIsDir
	}
	if !table.claim(rel) {
		return nil, errBeingWritten
	}
	u := &fileUpload{
		table:     table,
		key:       rel,
		shown:     filepath.Join(cfg.uploadDir, rel),
		dir:       -1,
		overwrite: cfg.uploadOverwrite,
	}
	defer func() {
		if err != nil {
			u.abort()
		}
	}()
	folder, name := splitFolder(rel)
	u.name = name
	if u.dir, err = openConfinedDir(cfg.uploadDir, folder); err != nil {
		return nil, err
	}
	if err := u.checkTarget(); err != nil {
		return nil, err
	}
	if size >= 0 {
		var fs unix.Statfs_t
		if err := unix.Fstatfs(u.dir, &fs); err == nil && uint64(size) > fs.Bavail*uint64(fs.Bsize) {
			return nil, errDiskFull
		}
	}
	if u.file, u.tmpName, err = createAnonymous(u.dir, unix.O_WRONLY, 0o644, hiddenTempPrefix, u.shown+" (anonymous)"); err != nil {
		return nil, err
	}
	if cfg.uploadMode >= 0 {
		if err := u.file.Chmod(os.FileMode(cfg.uploadMode)); err != nil {
			return nil, err
		}
	}
	u.buf = bufio.NewWriterSize(u.file, uploadBuffer)
	return u, nil
}

// checkTarget refuses a final name that is a symlink or not a regular file,
// and one that exists unless overwriting is allowed.
func (u *fileUpload) checkTarget() error {
	var st unix.Stat_t
	err := unix.Fstatat(u.dir, u.name, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil
	case err != nil:
		return err
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return errUploadSymlink
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return errIsDir
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return errNotFile
	case !u.overwrite:
		return errFileExists
	}
	return nil
}

// openConfinedDir opens the folder rel (slash-separated, already cleaned)
// below root without following any symlink: openat2 with RESOLVE_BENEATH
// and RESOLVE_NO_SYMLINKS, or, on kernels without it, a walk that opens one
// component at a time with O_NOFOLLOW.
func openConfinedDir(root, rel string) (int, error) {
	rootFd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(rootFd)
	fd, err := openBeneath(rootFd, rel)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		fd, err = walkBeneath(rootFd, rel)
	}
	return fd, confinedError(err)
}

func openBeneath(rootFd int, rel string) (int, error) {
	if rel == "" {
		rel = "."
	}
	return unix.Openat2(rootFd, rel, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
}

func walkBeneath(rootFd int, rel string) (int, error) {
	fd, err := unix.Dup(rootFd)
	if err != nil || rel == "" {
		return fd, err
	}
	for _, part := range strings.Split(rel, "/") {
		next, err := unix.Openat(fd, part, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOTDIR) {
			// O_DIRECTORY wins over O_NOFOLLOW: tell a symlink apart.
			var st unix.Stat_t
			if unix.Fstatat(fd, part, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				err = unix.ELOOP
			}
		}
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

// confinedError says what a failed confined open means to the client.
func confinedError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
		return errUploadSymlink
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
		return errNoFolder
	}
	return err
}

// createAnonymous creates a file with no name in the folder dirfd, opened
// with flags (O_RDWR or O_WRONLY) and mode less the umask: an O_TMPFILE
// (shown names it in logs), or, where the file system refuses that, a new
// hidden name starting with prefix, which it returns and the caller removes
// or renames.
func createAnonymous(dirfd, flags int, mode uint32, prefix, shown string) (*os.File, string, error) {
	fd, err := unix.Openat(dirfd, ".", unix.O_TMPFILE|flags|unix.O_CLOEXEC, mode)
	if err == nil {
		return os.NewFile(uintptr(fd), shown), "", nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
		return nil, "", err
	}
	return createHidden(dirfd, flags, mode, prefix, shown)
}

// createHidden is createAnonymous where O_TMPFILE is refused.
func createHidden(dirfd, flags int, mode uint32, prefix, shown string) (*os.File, string, error) {
	for range 100 {
		name := prefix + strconv.FormatUint(rand.Uint64(), 36)
		fd, err := unix.Openat(dirfd, name, unix.O_CREAT|unix.O_EXCL|flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return nil, "", err
		}
		return os.NewFile(uintptr(fd), filepath.Join(filepath.Dir(shown), name)), name, nil
	}
	return nil, "", errors.New("no free temporary name")
}

// hiddenTempPrefix starts the temporary names of uploads on file systems
// without O_TMPFILE.
const hiddenTempPrefix = ".r-tftpd-upload-"

func (u *fileUpload) write(p []byte) error {
	_, err := u.buf.Write(p)
	return err
}

// commit makes the upload visible under its name, durably: the file's data
// and then the folder entry reach the disk before the final ACK goes out.
func (u *fileUpload) commit() error {
	err := u.buf.Flush()
	if err == nil {
		err = u.file.Sync()
	}
	if err == nil {
		err = u.place()
	}
	if err == nil {
		err = unix.Fsync(u.dir)
	}
	if err != nil {
		u.abort()
		return err
	}
	u.finish()
	return nil
}

// place links the temporary file to its name: linkat, which fails instead
// of replacing a name that appeared meanwhile, or, for an allowed
// overwrite, renameat from a hidden name.
func (u *fileUpload) place() error {
	if u.tmpName == "" {
		err := linkAnonymous(u.file, u.dir, u.name)
		if !errors.Is(err, unix.EEXIST) || !u.overwrite {
			return err
		}
		// Replacing needs a name to rename from.
		for range 100 {
			name := hiddenTempPrefix + strconv.FormatUint(rand.Uint64(), 36)
			if err = linkAnonymous(u.file, u.dir, name); !errors.Is(err, unix.EEXIST) {
				if err == nil {
					u.tmpName = name
				}
				break
			}
		}
		if err != nil {
			return err
		}
	} else if !u.overwrite {
		if err := unix.Linkat(u.dir, u.tmpName, u.dir, u.name, 0); err != nil {
			return err
		}
		u.removeTemp()
		return nil
	}
	if err := u.checkTarget(); err != nil {
		return err
	}
	if err := unix.Renameat(u.dir, u.tmpName, u.dir, u.name); err != nil {
		return err
	}
	u.tmpName = ""
	return nil
}

// linkAnonymous gives an O_TMPFILE a name. AT_EMPTY_PATH needs
// CAP_DAC_READ_SEARCH; without it the file's /proc link does the same.
func linkAnonymous(f *os.File, dir int, name string) error {
	fd := int(f.Fd())
	err := unix.Linkat(fd, "", dir, name, unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPERM) {
		err = unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), dir, name, unix.AT_SYMLINK_FOLLOW)
	}
	return err
}

func (u *fileUpload) removeTemp() {
	if u.tmpName != "" {
		_ = unix.Unlinkat(u.dir, u.tmpName, 0)
		u.tmpName = ""
	}
}

// abort throws the upload away; nothing of it stays on disk.
func (u *fileUpload) abort() {
	if u.dir >= 0 {
		u.removeTemp()
	}
	u.finish()
}

func (u *fileUpload) finish() {
	if u.finished {
		return
	}
	u.finished = true
	if u.file != nil {
		u.file.Close()
	}
	if u.dir >= 0 {
		unix.Close(u.dir)
	}
	u.table.release(u.key)
}

func (u *fileUpload) summary() []any { return []any{"path", u.shown} }
