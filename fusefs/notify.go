package fusefs

import (
	"encoding/binary"
	"errors"
	"reflect"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Cache invalidations are written to the FUSE device here, not through
// go-fuse's Inode.NotifyContent and NotifyEntry. go-fuse writes every
// notification and every reply under one mutex, while the kernel handles
// an invalidation by waiting: an inode's for the locks of its pages that
// reads in flight hold, an entry's for the lock of its directory that
// lookups in flight hold. Those reads and lookups are answered by writes
// that then wait for the mutex: a deadlock (a test was found stuck in
// invalidate_inode_pages2_range). The kernel takes writes to /dev/fuse
// from several threads at once, so an invalidation written on its own
// waits only for the replies it needs, and they go out. A page push
// (FUSE_NOTIFY_STORE, pagepush.go) waits the same way, for the locks of
// the pages it fills.
//
// go-fuse keeps the device descriptor and the kernel's node ids to itself;
// they are read by reflection (go-fuse is pinned in go.mod). Where that
// fails, nothing is invalidated that could block: attributes only, through
// go-fuse, which never waits; and no page is pushed (pagepush.go).
//
// The notifier writes to a duplicate of go-fuse's descriptor, closed by
// FS.Close: go-fuse closes its own when its loop ends, and a notification
// still on its way (a push from the background) must never land in
// whatever file is opened next under that number.

// Kernel notification codes and sizes (include/uapi/linux/fuse.h).
const (
	notifyInvalInode = 2
	notifyInvalEntry = 3
	notifyStore      = 4
	outHeaderSize    = 16
	storeOutSize     = 24 // fuse_notify_store_out: nodeid, offset, size, padding
)

// notifier writes notifications to one mount's FUSE device.
type notifier struct {
	mu     sync.RWMutex // held for reading by writes, for writing by close
	fd     int
	closed bool
}

// newNotifier duplicates srv's device descriptor; nil if it cannot.
func newNotifier(srv *fuse.Server) *notifier {
	v := reflect.ValueOf(srv).Elem().FieldByName("mountFd")
	if !v.IsValid() || v.Kind() != reflect.Int || v.Int() <= 0 {
		return nil
	}
	fd, err := unix.FcntlInt(uintptr(v.Int()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	return &notifier{fd: fd}
}

// close lets go of the descriptor once the writes in progress are done;
// later writes fail with EBADF.
func (n *notifier) close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.closed {
		n.closed = true
		syscall.Close(n.fd)
	}
}

var (
	nodeIDOnce  sync.Once
	nodeIDField = -1 // index of fs.Inode's nodeId, or -1
)

// nodeID is the kernel's node id of in, or 0 when unknown.
func nodeID(in *fs.Inode) uint64 {
	nodeIDOnce.Do(func() {
		if f, ok := reflect.TypeOf(fs.Inode{}).FieldByName("nodeId"); ok && f.Type.Kind() == reflect.Uint64 && len(f.Index) == 1 {
			nodeIDField = f.Index[0]
		}
	})
	if nodeIDField < 0 || in == nil {
		return 0
	}
	return reflect.ValueOf(in).Elem().Field(nodeIDField).Uint()
}

// send writes one notification: code, then the parts, in one write. The
// kernel's error comes back as is (ENOENT: it does not know the node).
func (n *notifier) send(code int32, parts ...[]byte) error {
	size := outHeaderSize
	for _, p := range parts {
		size += len(p)
	}
	hdr := make([]byte, outHeaderSize)
	binary.LittleEndian.PutUint32(hdr[0:], uint32(size))
	binary.LittleEndian.PutUint32(hdr[4:], uint32(code))
	// unique 0: a notification
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.closed {
		return syscall.EBADF
	}
	_, err := unix.Writev(n.fd, append([][]byte{hdr}, parts...))
	return err
}

// write sends an invalidation; a node the kernel no longer knows has
// nothing cached, so that is no error.
func (n *notifier) write(code int32, body []byte) error {
	err := n.send(code, body)
	if errors.Is(err, syscall.ENOENT) {
		return nil
	}
	return err
}

// store writes data, the concatenation of its pieces, into the kernel's
// page cache of node at offset off (FUSE_NOTIFY_STORE), in one write. The
// kernel extends the file's size, and drops its attributes, when
// off+len(data) passes the size it holds: callers never store past the
// end of the file. ENOENT: the kernel does not know node.
func (n *notifier) store(node uint64, off int64, data ...[]byte) error {
	size := 0
	for _, d := range data {
		size += len(d)
	}
	b := make([]byte, storeOutSize)
	binary.LittleEndian.PutUint64(b[0:], node)
	binary.LittleEndian.PutUint64(b[8:], uint64(off))
	binary.LittleEndian.PutUint32(b[16:], uint32(size))
	return n.send(notifyStore, append([][]byte{b}, data...)...)
}

// invalInode drops the attributes of node and, for off >= 0, its cached
// pages from off on (length 0: to the end), mapped ones included.
func (n *notifier) invalInode(node uint64, off, length int64) error {
	b := make([]byte, 24)
	binary.LittleEndian.PutUint64(b[0:], node)
	binary.LittleEndian.PutUint64(b[8:], uint64(off))
	binary.LittleEndian.PutUint64(b[16:], uint64(length))
	return n.write(notifyInvalInode, b)
}

// invalEntry drops the kernel's entry name in directory parent.
func (n *notifier) invalEntry(parent uint64, name string) error {
	b := make([]byte, 16, 16+len(name)+1)
	binary.LittleEndian.PutUint64(b[0:], parent)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(name)))
	b = append(append(b, name...), 0)
	return n.write(notifyInvalEntry, b)
}

// dropPages makes the kernel forget in's attributes and pages (a
// directory's listing, a symlink's target), waiting for reads in flight
// of those pages to be answered.
func (f *FS) dropPages(in *fs.Inode) {
	if n := f.notify.Load(); n != nil {
		if id := nodeID(in); id != 0 {
			if err := n.invalInode(id, 0, 0); err == nil {
				return
			}
		}
	}
	in.NotifyContent(-1, 0) // attributes only: never waits
}

// dropEntry makes the kernel forget name in dir, waiting for lookups in
// flight there to be answered. Without the device it does nothing: a
// lookup that reaches us gets the right answer anyway.
func (f *FS) dropEntry(dir *fs.Inode, name string) {
	if n := f.notify.Load(); n != nil {
		if id := nodeID(dir); id != 0 {
			n.invalEntry(id, name)
		}
	}
}
