// Turning a requested name into something to serve. Names are resolved below
// the served root: a leading "/" is dropped, "." and empty components are
// skipped and ".." is refused, so no request reaches a file outside the root
// except through a symlink an administrator put inside it.
package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// fileSource serves a local file.
type fileSource struct {
	*os.File
	size int64
}

func (f fileSource) Size() int64 { return f.size }

// cleanRequestPath turns a TFTP file name into a path relative to the root.
// A backslash is an ordinary byte, as on any POSIX file system.
func cleanRequestPath(name string) (string, error) {
	var parts []string
	for _, p := range strings.Split(name, "/") {
		switch p {
		case "", ".":
			continue
		case "..":
			return "", errOutside
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "/"), nil
}

// openRequested opens the regular file a request names.
func openRequested(root, name string) (source, error) {
	rel, err := cleanRequestPath(name)
	if err != nil {
		return nil, err
	}
	if rel == "" {
		return nil, errIsDir
	}
	// O_NONBLOCK keeps a FIFO in the tree from blocking the open; it has no
	// effect on regular files.
	f, err := os.OpenFile(filepath.Join(root, rel), os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	switch {
	case err != nil:
	case fi.IsDir():
		err = errIsDir
	case !fi.Mode().IsRegular():
		err = newWireError(codeAccess, "not a regular file")
	default:
		return fileSource{File: f, size: fi.Size()}, nil
	}
	f.Close()
	return nil, err
}
