package fusefs

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// rawShim sits between the kernel and go-fuse's node bridge, for what the
// bridge does not pass on: it answers OPENDIR itself, tells nodes which
// reads are of a program being started (execReads), and runs onInit.
//
// It answers OPENDIR with ENOSYS. The kernel then stops sending OPENDIR and
// RELEASEDIR for good and treats every directory as opened with
// FOPEN_KEEP_CACHE|FOPEN_CACHE_DIR, so a walk over directories it has
// listed before costs no round trip at all (a find over a warm 1,700
// directory tree otherwise pays two per directory).
//
// The bridge keeps a directory's read position in an open handle, so each
// READDIR(PLUS), which now arrives without one, gets a handle of its own
// for the length of the request and seeks it to the requested offset.
// Listings never change, so the offsets agree across handles.
//
// It also runs onInit once the kernel's INIT has been answered and before
// any other request is read (go-fuse calls Init at that point), so that
// choices depending on what the kernel offers are made before the first
// request that depends on them.
type rawShim struct {
	fuse.RawFileSystem
	onInit func(*fuse.Server)
	execs  *execReads
}

func (r *rawShim) Init(s *fuse.Server) {
	r.RawFileSystem.Init(s)
	if r.onInit != nil {
		r.onInit(s)
	}
}

func (r *rawShim) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fuse.ENOSYS
}

func (r *rawShim) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.withHandle(cancel, in, func(in *fuse.ReadIn) fuse.Status {
		return r.RawFileSystem.ReadDir(cancel, in, out)
	})
}

func (r *rawShim) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.withHandle(cancel, in, func(in *fuse.ReadIn) fuse.Status {
		return r.RawFileSystem.ReadDirPlus(cancel, in, out)
	})
}

func (r *rawShim) ReleaseDir(in *fuse.ReleaseIn) {
	if in.Fh != 0 {
		r.RawFileSystem.ReleaseDir(in)
	}
}

// withHandle runs read with a directory handle opened for it alone, unless
// the kernel sent one (a mount that opened directories before the kernel
// learned otherwise cannot happen, but costs nothing to honour).
func (r *rawShim) withHandle(cancel <-chan struct{}, in *fuse.ReadIn, read func(*fuse.ReadIn) fuse.Status) fuse.Status {
	if in.Fh != 0 {
		return read(in)
	}
	var oo fuse.OpenOut
	if st := r.RawFileSystem.OpenDir(cancel, &fuse.OpenIn{InHeader: in.InHeader, Flags: in.Flags}, &oo); !st.Ok() {
		return st
	}
	defer r.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: in.InHeader, Fh: oo.Fh})
	local := *in
	local.Fh = oo.Fh
	return read(&local)
}

// fmodeExec is the kernel's __FMODE_EXEC: it opens a file it is about to
// execute (a program, or its ELF interpreter) with this flag, and FUSE
// passes a file's open flags in each of its READs, with OPEN or without.
const fmodeExec = 0x20

func (r *rawShim) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	if in.Flags&fmodeExec != 0 && r.execs != nil {
		r.execs.mark(cancel)
		defer r.execs.unmark(cancel)
	}
	return r.RawFileSystem.Read(cancel, in, buf)
}

// execReads marks the READs in flight that are of a file being executed.
// The bridge gives a node's Read only a context whose Done channel is the
// request's own, unique among requests in flight, so that channel is the
// mark's key.
type execReads struct {
	n atomic.Int32 // marks held: most reads look no further
	m sync.Map     // <-chan struct{} → struct{}
}

func (e *execReads) mark(done <-chan struct{}) {
	e.n.Add(1)
	e.m.Store(done, struct{}{})
}

func (e *execReads) unmark(done <-chan struct{}) {
	e.m.Delete(done)
	e.n.Add(-1)
}

// is tells whether ctx is that of a read marked by the shim.
func (e *execReads) is(ctx context.Context) bool {
	if e.n.Load() == 0 {
		return false
	}
	_, ok := e.m.Load(ctx.Done())
	return ok
}
