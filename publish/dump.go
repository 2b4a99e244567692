package publish

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// A store path's NAR is written by two goroutines. The walker visits the
// tree in NAR order (entries sorted bytewise), opens each regular file and
// asks the kernel to start reading it (a store path of many small files,
// read one after another, otherwise waits for the disk once per file), and
// hands over the NAR framing with the open file. The writer copies framing
// and file contents straight into the chunks of a fanout. The walker stays
// at most a window of file bytes ahead of the writer, and the window is
// shared, so that the walk of the next store path can start while this
// one's files are still being written. The bytes are those of
// narindex.DumpPath (tests compare both with nix-store --dump).

// walkItems bounds the items a walker hands over ahead of its writer.
const walkItems = 16384

// dumpItem is the next piece of a NAR: framing, then (file) the size bytes
// of the file name, read from fd, or, when fd < 0, from name opened again;
// or the error that ended the walk. charge is the part of the file counted
// in the read-ahead window.
type dumpItem struct {
	head   []byte
	file   bool
	fd     int
	size   int64
	charge int64
	name   string
	err    error
}

// walker produces the dumpItems of one store path.
type walker struct {
	root  string
	ra    *readAhead
	items chan dumpItem
	quit  chan struct{}
	done  chan struct{} // closed when the walk has ended
	stop1 sync.Once

	head []byte // framing not yet handed over
}

// startWalk starts walking root.
func startWalk(root string, ra *readAhead) *walker {
	w := &walker{root: root, ra: ra, items: make(chan dumpItem, walkItems), quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer close(w.items)
		w.str("nix-archive-1")
		err := w.node(-1, root, root, typeUnknown)
		if err == nil {
			w.emit(dumpItem{head: w.head, fd: -1})
		} else if !errors.Is(err, errStopped) {
			w.emit(dumpItem{fd: -1, err: err})
		}
	}()
	return w
}

var errStopped = errors.New("walk stopped")

// stop ends the walk and closes the files it opened that the writer did
// not take, releasing their share of the window.
func (w *walker) stop() {
	w.stop1.Do(func() { close(w.quit) })
	<-w.done
	for it := range w.items {
		w.ra.done(&it)
	}
}

func (w *walker) emit(it dumpItem) bool {
	select {
	case w.items <- it:
		return true
	case <-w.quit:
		w.ra.done(&it)
		return false
	}
}

func (w *walker) str(s string) {
	w.head = binary.LittleEndian.AppendUint64(w.head, uint64(len(s)))
	w.head = append(w.head, s...)
	w.head = append(w.head, make([]byte, padding(int64(len(s))))...)
}

func padding(n int64) int64 { return (8 - n%8) % 8 }

// typeUnknown is a file type no entry has: look it up.
const typeUnknown = ^uint32(0)

// node appends the NAR of name, an entry of the directory dirfd (or, with
// dirfd < 0, the path name itself) whose type (S_IFMT bits) the directory
// listing gave as typ; p is its path, for errors.
func (w *walker) node(dirfd int, name, p string, typ uint32) error {
	select {
	case <-w.quit:
		return errStopped
	default:
	}
	var st unix.Stat_t
	if typ == typeUnknown {
		if err := fstatat(dirfd, name, &st); err != nil {
			return &fs.PathError{Op: "lstat", Path: p, Err: err}
		}
		typ = st.Mode & unix.S_IFMT
	}
	w.str("(")
	w.str("type")
	switch typ {
	case unix.S_IFREG:
		fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK)
		if err != nil {
			return &fs.PathError{Op: "open", Path: p, Err: err}
		}
		// The open file is what is read: its own mode and size count.
		if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			unix.Close(fd)
			if err == nil {
				err = errors.New("changed type while being read")
			}
			return &fs.PathError{Op: "stat", Path: p, Err: err}
		}
		w.str("regular")
		if st.Mode&0o100 != 0 {
			w.str("executable")
			w.str("")
		}
		w.str("contents")
		w.head = binary.LittleEndian.AppendUint64(w.head, uint64(st.Size))
		// Only the start of a large file is asked for: the kernel reads
		// ahead of sequential reads anyway, and the rest of the window
		// is better spent on the files after it.
		charge := min(st.Size, w.ra.window/4)
		if !w.ra.acquire(charge, w.quit) {
			unix.Close(fd)
			return errStopped
		}
		unix.Fadvise(fd, 0, charge, unix.FADV_WILLNEED) // advice only
		if !w.ra.holdFile() {
			unix.Close(fd)
			fd = -1
		}
		if !w.emit(dumpItem{head: w.head, file: true, fd: fd, size: st.Size, charge: charge, name: p}) {
			return errStopped
		}
		w.head = make([]byte, padding(st.Size), 256)
	case unix.S_IFDIR:
		w.str("directory")
		fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
		if err != nil {
			return &fs.PathError{Op: "open", Path: p, Err: err}
		}
		d := os.NewFile(uintptr(fd), p)
		ents, err := d.ReadDir(-1)
		if err != nil {
			d.Close()
			return err
		}
		// Bytewise, as Nix sorts.
		slices.SortFunc(ents, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
		for _, e := range ents {
			n := e.Name()
			w.str("entry")
			w.str("(")
			w.str("name")
			w.str(n)
			w.str("node")
			if err := w.node(int(d.Fd()), n, filepath.Join(p, n), entryType(e.Type())); err != nil {
				d.Close()
				return err
			}
			w.str(")")
		}
		d.Close()
	case unix.S_IFLNK:
		target, err := readlinkat(dirfd, name)
		if err != nil {
			return &fs.PathError{Op: "readlink", Path: p, Err: err}
		}
		w.str("symlink")
		w.str("target")
		w.str(target)
	default:
		return fmt.Errorf("%s: cannot put a file of type %#o in a NAR", p, typ)
	}
	w.str(")")
	return nil
}

func fstatat(dirfd int, name string, st *unix.Stat_t) error {
	if dirfd < 0 {
		return unix.Lstat(name, st)
	}
	return unix.Fstatat(dirfd, name, st, unix.AT_SYMLINK_NOFOLLOW)
}

func openat(dirfd int, name string, flags int) (int, error) {
	if dirfd < 0 {
		dirfd = unix.AT_FDCWD
	}
	for {
		fd, err := unix.Openat(dirfd, name, flags|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// entryType turns the type a directory listing gives into S_IFMT bits.
func entryType(m fs.FileMode) uint32 {
	switch m.Type() {
	case 0:
		return unix.S_IFREG
	case fs.ModeDir:
		return unix.S_IFDIR
	case fs.ModeSymlink:
		return unix.S_IFLNK
	default:
		return typeUnknown // and lstat tells what it is
	}
}

func readlinkat(dirfd int, name string) (string, error) {
	if dirfd < 0 {
		dirfd = unix.AT_FDCWD
	}
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, 2*len(buf))
	}
}

// dumpChunks is the source writing the NAR of the walk into chunks.
func dumpChunks(w *walker) func(*fanout) error {
	return func(f *fanout) error {
		d := &dumpWriter{f: f, ra: w.ra}
		for it := range w.items {
			if it.err != nil {
				return it.err
			}
			if err := d.put(it.head); err != nil {
				w.ra.done(&it)
				return err
			}
			if !it.file {
				continue
			}
			err := d.copyFile(&it)
			w.ra.done(&it)
			if err != nil {
				return err
			}
		}
		if d.c != nil {
			f.send(d.c)
		}
		return nil
	}
}

// dumpWriter fills chunks.
type dumpWriter struct {
	f  *fanout
	ra *readAhead
	c  *chunk // being filled; nil before the first byte
}

// room returns the current chunk, sending a full one on first.
func (d *dumpWriter) room() ([]byte, error) {
	if d.c != nil && len(d.c.b) == chunkSize {
		d.f.send(d.c)
		d.c = nil
	}
	if d.c == nil {
		c, err := d.f.get()
		if err != nil {
			return nil, err
		}
		d.c = c
	}
	return d.c.b[len(d.c.b):chunkSize], nil
}

func (d *dumpWriter) put(p []byte) error {
	for len(p) > 0 {
		r, err := d.room()
		if err != nil {
			return err
		}
		n := copy(r, p)
		d.c.b = d.c.b[:len(d.c.b)+n]
		p = p[n:]
	}
	return nil
}

// copyFile reads the item's size bytes straight into chunks, giving back
// its share of the read-ahead window as it goes. A file larger than the
// part the walk asked for is asked for further ahead as it is read, a
// step at a time, for kernels whose own read-ahead is short.
func (d *dumpWriter) copyFile(it *dumpItem) error {
	fd := it.fd
	if fd < 0 {
		var err error
		if fd, err = openat(-1, it.name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK); err != nil {
			return &fs.PathError{Op: "open", Path: it.name, Err: err}
		}
		defer unix.Close(fd)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			if err == nil {
				err = errors.New("changed type while being read")
			}
			return &fs.PathError{Op: "stat", Path: it.name, Err: err}
		}
	}
	left := it.size
	step := max(d.ra.window/8, 1<<20)
	advised := it.charge // the walk asked for [0, charge)
	for left > 0 {
		if off := it.size - left; advised < it.size && off+step >= advised {
			n := min(step, it.size-advised)
			unix.Fadvise(fd, advised, n, unix.FADV_WILLNEED) // advice only
			advised += n
		}
		r, err := d.room()
		if err != nil {
			return err
		}
		n, err := unix.Read(fd, r[:min(int64(len(r)), left)])
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return &fs.PathError{Op: "read", Path: it.name, Err: err}
		}
		if n == 0 {
			return fmt.Errorf("%s: changed while being read (%d bytes, expected %d)", it.name, it.size-left, it.size)
		}
		d.c.b = d.c.b[:len(d.c.b)+n]
		left -= int64(n)
		if r := min(it.charge, int64(n)); r > 0 {
			d.ra.release(r)
			it.charge -= r
		}
	}
	return nil
}
