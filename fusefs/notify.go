package fusefs

import (
	"encoding/binary"
	"errors"
	"reflect"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
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
// waits only for the replies it needs, and they go out.
//
// go-fuse keeps the device descriptor and the kernel's node ids to itself;
// they are read by reflection (go-fuse is pinned in go.mod). Where that
// fails, nothing is invalidated that could block: attributes only, through
// go-fuse, which never waits.

// Kernel notification codes and sizes (include/uapi/linux/fuse.h).
const (
	notifyInvalInode = 2
	notifyInvalEntry = 3
	outHeaderSize    = 16
)

// notifier writes invalidations to one mount's FUSE device.
type notifier struct{ fd int }

// newNotifier finds srv's device descriptor; nil if it cannot.
func newNotifier(srv *fuse.Server) *notifier {
	v := reflect.ValueOf(srv).Elem().FieldByName("mountFd")
	if !v.IsValid() || v.Kind() != reflect.Int || v.Int() <= 0 {
		return nil
	}
	return &notifier{fd: int(v.Int())}
}

// nodeID is the kernel's node id of in, or 0 when unknown.
func nodeID(in *fs.Inode) uint64 {
	v := reflect.ValueOf(in).Elem().FieldByName("nodeId")
	if !v.IsValid() || v.Kind() != reflect.Uint64 {
		return 0
	}
	return v.Uint()
}

func (n *notifier) write(code int32, body []byte) error {
	msg := make([]byte, outHeaderSize, outHeaderSize+len(body))
	msg = append(msg, body...)
	binary.LittleEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.LittleEndian.PutUint32(msg[4:], uint32(code))
	// unique 0: a notification
	_, err := syscall.Write(n.fd, msg)
	if errors.Is(err, syscall.ENOENT) {
		return nil // the kernel no longer knows the node: nothing cached
	}
	return err
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
