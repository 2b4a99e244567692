package fusefs

import (
	"github.com/hanwen/go-fuse/v2/fuse"
)

// noOpendir sits between the kernel and go-fuse's node bridge and answers
// OPENDIR with ENOSYS. The kernel then stops sending OPENDIR and
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
type noOpendir struct {
	fuse.RawFileSystem
	onInit func(*fuse.Server)
}

func (r *noOpendir) Init(s *fuse.Server) {
	r.RawFileSystem.Init(s)
	if r.onInit != nil {
		r.onInit(s)
	}
}

func (r *noOpendir) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fuse.ENOSYS
}

func (r *noOpendir) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.withHandle(cancel, in, func(in *fuse.ReadIn) fuse.Status {
		return r.RawFileSystem.ReadDir(cancel, in, out)
	})
}

func (r *noOpendir) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.withHandle(cancel, in, func(in *fuse.ReadIn) fuse.Status {
		return r.RawFileSystem.ReadDirPlus(cancel, in, out)
	})
}

func (r *noOpendir) ReleaseDir(in *fuse.ReleaseIn) {
	if in.Fh != 0 {
		r.RawFileSystem.ReleaseDir(in)
	}
}

// withHandle runs read with a directory handle opened for it alone, unless
// the kernel sent one (a mount that opened directories before the kernel
// learned otherwise cannot happen, but costs nothing to honour).
func (r *noOpendir) withHandle(cancel <-chan struct{}, in *fuse.ReadIn, read func(*fuse.ReadIn) fuse.Status) fuse.Status {
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
