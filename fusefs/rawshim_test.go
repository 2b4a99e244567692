package fusefs

import (
	"context"
	"slices"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// probeRoot is a root node that records whether each read it is given is
// marked as a program's, and can have another request served while a
// read is in flight.
type probeRoot struct {
	fs.Inode
	execs  *execReads
	marked []bool
	during func()
}

func (r *probeRoot) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	r.marked = append(r.marked, r.execs.is(ctx))
	if during := r.during; during != nil {
		r.during = nil
		during()
	}
	return fuse.ReadResultData(nil), 0
}

// Reads of a file being executed (__FMODE_EXEC among the flags FUSE sends
// in each READ) are marked for the node, through go-fuse's own node bridge
// (whose context the mark relies on), and only while they last; other
// reads, in flight at the same time or not, are not.
func TestShimMarksExecReads(t *testing.T) {
	var execs execReads
	root := &probeRoot{execs: &execs}
	shim := &rawShim{RawFileSystem: fs.NewNodeFS(root, &fs.Options{}), execs: &execs}
	read := func(flags uint32) <-chan struct{} {
		cancel := make(chan struct{}) // each request has its own
		in := &fuse.ReadIn{InHeader: fuse.InHeader{NodeId: 1}, Flags: flags, Size: 16}
		shim.Read(cancel, in, make([]byte, 16))
		return cancel
	}
	const largefile, nonblock = 0x8000, 0x800
	done := read(fmodeExec | largefile) // as the kernel opens a program
	read(largefile)
	read(largefile | nonblock)
	if want := []bool{true, false, false}; !slices.Equal(root.marked, want) {
		t.Fatalf("marked %v, want %v", root.marked, want)
	}
	if execs.is(&fuse.Context{Cancel: done}) || execs.n.Load() != 0 {
		t.Fatalf("a mark outlived its read: %d held", execs.n.Load())
	}

	root.marked = nil
	root.during = func() { read(largefile) }
	read(fmodeExec)
	if want := []bool{true, false}; !slices.Equal(root.marked, want) {
		t.Fatalf("an exec read with a plain read during it: marked %v, want %v", root.marked, want)
	}
}
