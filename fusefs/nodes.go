package fusefs

import (
	"context"
	"errors"
	"sort"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/integrity"
	"github.com/ipnix/ipnix/narindex"
)

// preferredIOSize is reported as st_blksize: tools size their buffers by it,
// and every FUSE request costs a round trip.
const preferredIOSize = 1 << 20

// rootNode is the mount root: empty until store paths are looked up.
type rootNode struct {
	fs.Inode
	fsys *FS
}

// entryNode is any entry inside a store path. The variants below add only
// the operations their type supports.
type entryNode struct {
	fs.Inode
	sp      *storePath
	ln      *narindex.ListingNode
	ordinal uint32
}

type dirNode struct {
	entryNode
	// ents is the sorted listing, built once: with OPENDIR answered
	// ENOSYS every READDIR(PLUS) of a few dozen entries asks for the
	// directory again, and sorting a large one each time made listing it
	// quadratic.
	ents atomic.Pointer[[]fuse.DirEntry]
}
type fileNode struct {
	entryNode
	prefetched atomic.Bool // fetched whole once: a small file opened, or a program started
	// ra is the read-ahead state of reads that come without an open
	// handle (see FS.opens).
	ra atomic.Pointer[fetch.Readahead]
}
type symlinkNode struct{ entryNode }

// Root returns the root node to mount.
func (f *FS) Root() fs.InodeEmbedder { return f.root }

func (r *rootNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if name == linksDir {
		return r.links(ctx, out), 0
	}
	sp, err := r.fsys.storePath(ctx, name)
	if err != nil {
		r.fsys.Stats.LookupsRefused.Add(1)
		e := errno(err)
		switch e {
		case syscall.ENOENT:
			// A refusal is remembered for a while; its reason is logged
			// once.
			if !errors.Is(err, narindex.ErrRemembered) {
				r.fsys.log.Info("store path not shown", "name", name, "reason", err)
			}
			out.SetEntryTimeout(rootNegativeTimeout)
		case syscall.EINTR:
		default:
			r.fsys.log.Error("store path lookup failed", "name", name, "err", err)
		}
		return nil, e
	}
	if sp.quarantined() {
		return nil, syscall.EIO
	}
	r.fsys.Stats.Lookups.Add(1)
	sp.touch()
	sp.noteLookup(&r.Inode, name, sp.listing.Root)
	return sp.newInode(ctx, &r.Inode, sp.listing.Root, out), 0
}

func (r *rootNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	r.fsys.mu.Lock()
	paths := make([]*storePath, 0, len(r.fsys.paths))
	for _, sp := range r.fsys.paths {
		if !sp.quarantined() {
			paths = append(paths, sp)
		}
	}
	r.fsys.mu.Unlock()
	// Closures given at start stay listed while their listing is
	// dropped; the kernel looks them up again to learn their type.
	r.fsys.mu.Lock()
	var unloaded []fuse.DirEntry
	for base, idx := range r.fsys.pinned {
		if r.fsys.paths[base] == nil {
			unloaded = append(unloaded, fuse.DirEntry{Name: base, Ino: ino(idx, 0)})
		}
	}
	r.fsys.mu.Unlock()
	out := make([]fuse.DirEntry, 0, len(paths)+len(unloaded)+2)
	out = append(out, fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: 1}, fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: 1})
	for _, sp := range paths {
		out = append(out, fuse.DirEntry{Name: sp.base, Mode: modeOf(sp.listing.Root), Ino: ino(sp.index, 0)})
	}
	out = append(out, unloaded...)
	sort.Slice(out[2:], func(i, j int) bool { return out[2+i].Name < out[2+j].Name })
	return fs.NewListDirStream(out), 0
}

func (r *rootNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o555
	out.Nlink = 2
	// The root changes as store paths are added; its mtime moving on is
	// what makes the kernel drop its cached listing (see storePath).
	t := 1 + uint64(r.fsys.rootGen.Load())
	out.Mtime, out.Atime, out.Ctime = t, t, t
	out.SetTimeout(rootAttrTimeout)
	out.Blksize = preferredIOSize
	return 0
}

func (r *rootNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = 4096
	out.Frsize = 4096
	out.NameLen = 255
	return 0
}

// linksDir is the directory in a Nix store where Nix keeps hard links for
// deduplication. Nix creates it whenever it opens a store for writing,
// also one used only for its database (the lower store of a
// local-overlay store, nix-store --load-db); an empty one here lets it.
const linksDir = ".links"

// emptyDir is a read-only directory with nothing in it.
type emptyDir struct{ fs.Inode }

func (d *emptyDir) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o555
	out.Nlink = 2
	out.Mtime, out.Atime, out.Ctime = 1, 1, 1
	out.SetTimeout(immutableTimeout)
	return 0
}

func (d *emptyDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	return fs.NewListDirStream(nil), 0
}

// links returns the root's empty .links directory.
func (r *rootNode) links(ctx context.Context, out *fuse.EntryOut) *fs.Inode {
	out.Mode = syscall.S_IFDIR | 0o555
	out.Nlink = 2
	out.Mtime, out.Atime, out.Ctime = 1, 1, 1
	out.SetEntryTimeout(immutableTimeout)
	out.SetAttrTimeout(immutableTimeout)
	// Index 0 is never a store path's; 1 is the root's inode number.
	return r.NewInode(ctx, &emptyDir{}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino(0, 2)})
}

// newInode builds (or finds) the inode for listing entry ln of sp under
// parent, and fills out.
func (sp *storePath) newInode(ctx context.Context, parent *fs.Inode, ln *narindex.ListingNode, out *fuse.EntryOut) *fs.Inode {
	ord := sp.ordinals[ln]
	var node fs.InodeEmbedder
	switch ln.Type {
	case narindex.TypeDirectory:
		node = &dirNode{entryNode: entryNode{sp: sp, ln: ln, ordinal: ord}}
	case narindex.TypeSymlink:
		node = &symlinkNode{entryNode{sp: sp, ln: ln, ordinal: ord}}
	default:
		node = &fileNode{entryNode: entryNode{sp: sp, ln: ln, ordinal: ord}}
	}
	sp.fillAttr(ln, ord, &out.Attr)
	return parent.NewInode(ctx, node, fs.StableAttr{Mode: modeOf(ln), Ino: ino(sp.index, ord)})
}

func modeOf(ln *narindex.ListingNode) uint32 {
	switch ln.Type {
	case narindex.TypeDirectory:
		return syscall.S_IFDIR
	case narindex.TypeSymlink:
		return syscall.S_IFLNK
	}
	return syscall.S_IFREG
}

func (sp *storePath) fillAttr(ln *narindex.ListingNode, ord uint32, a *fuse.Attr) {
	a.Ino = ino(sp.index, ord)
	a.Nlink = 1
	a.Mtime, a.Atime, a.Ctime = 1, 1, 1
	a.Uid, a.Gid = 0, 0
	a.Blksize = preferredIOSize
	switch ln.Type {
	case narindex.TypeDirectory:
		a.Mode = syscall.S_IFDIR | 0o555
		a.Nlink = 2
	case narindex.TypeSymlink:
		a.Mode = syscall.S_IFLNK | 0o777
		a.Size = uint64(len(ln.Target))
	default:
		a.Mode = syscall.S_IFREG | 0o444
		if ln.Executable {
			a.Mode |= 0o111
		}
		a.Size = uint64(ln.Size)
		a.Blocks = (a.Size + 511) / 512
	}
}

func (n *entryNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if n.sp.quarantined() {
		return syscall.EIO
	}
	n.sp.fillAttr(n.ln, n.ordinal, &out.Attr)
	out.SetTimeout(immutableTimeout)
	return 0
}

func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if d.sp.quarantined() {
		return nil, syscall.EIO
	}
	child := d.ln.Entries[name]
	if child == nil {
		out.SetEntryTimeout(immutableTimeout)
		return nil, syscall.ENOENT
	}
	d.sp.noteLookup(&d.Inode, name, child)
	return d.sp.newInode(ctx, &d.Inode, child, out), 0
}

func (d *dirNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	if d.sp.quarantined() {
		return nil, syscall.EIO
	}
	return fs.NewListDirStream(d.entries()), 0
}

// OpendirHandle lets the kernel cache the listing (FOPEN_CACHE_DIR): a
// directory inside a store path never changes.
func (d *dirNode) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if d.sp.quarantined() {
		return nil, 0, syscall.EIO
	}
	return fs.NewListDirStream(d.entries()), fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

func (d *dirNode) entries() []fuse.DirEntry {
	if e := d.ents.Load(); e != nil {
		return *e
	}
	names := sortedNames(d.ln)
	out := make([]fuse.DirEntry, len(names))
	for i, name := range names {
		c := d.ln.Entries[name]
		out[i] = fuse.DirEntry{Name: name, Mode: modeOf(c), Ino: ino(d.sp.index, d.sp.ordinals[c])}
	}
	d.ents.Store(&out)
	return out
}

// Flush answers ENOSYS once, and the kernel stops sending FLUSH on every
// close: nothing is ever written here.
func (f *fileNode) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	return syscall.ENOSYS
}

func (s *symlinkNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if s.sp.quarantined() {
		return nil, syscall.EIO
	}
	return []byte(s.ln.Target), 0
}

func (f *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	fsys := f.sp.fs
	if !fsys.opens.Load() {
		// Nothing to hand over: the kernel stops asking (see FS.opens).
		return nil, 0, syscall.ENOSYS
	}
	if f.sp.quarantined() {
		return nil, 0, syscall.EIO
	}
	h := &fileHandle{fd: -1, fsys: fsys}
	if fsys.prefetch != nil {
		h.ra = fetch.NewReadahead(fsys.cfg.Readahead)
		f.prefetchSmall(h.stopped(f.sp))
	}
	if fsys.files != nil && f.ln.Size >= passthroughMin {
		fd, err := fsys.files.open(f.sp.copiesKey, f.ln)
		if err != nil {
			fsys.log.Debug("no passthrough", "path", f.sp.base, "err", err)
		} else {
			h.fd = fd
		}
	}
	return h, fuse.FOPEN_KEEP_CACHE, 0
}

// prefetchSmall fetches a small file whole, once: later reads find the
// pages in the kernel's cache (FOPEN_KEEP_CACHE).
func (f *fileNode) prefetchSmall(stop func() bool) {
	if size := f.ln.Size; size > 0 && size <= smallFileBytes && !f.prefetched.Swap(true) {
		f.sp.fs.prefetch.Prefetch(f.sp.nar, f.ln.NarOffset, f.ln.NarOffset+size, stop)
	}
}

// prefetchExec fetches a file being executed whole, up to ExecAhead bytes
// from its start, once: the kernel's loader and the page faults after it
// read a program all over, in no order read-ahead could follow, and the
// start waits for each read in turn. It is called from READ, which
// carries the flags of the open with OPEN or without, and which a program
// handed a local copy for passthrough never sends. It is done once per
// file, so it stops only on quarantine: a program that exits at once must
// not leave the next start of it with half a fetch.
func (f *fileNode) prefetchExec() {
	fsys := f.sp.fs
	if n := min(f.ln.Size, fsys.cfg.ExecAhead); n > smallFileBytes && !f.prefetched.Swap(true) {
		fsys.Stats.ExecFetches.Add(1)
		fsys.prefetch.Prefetch(f.sp.nar, f.ln.NarOffset, f.ln.NarOffset+n, f.sp.quarantined)
	}
}

// fileHandle is one open file: its read-ahead state and, for passthrough,
// the descriptor of a local copy.
type fileHandle struct {
	ra   *fetch.Readahead // nil when read-ahead is off
	stop atomic.Bool      // set on release: abandon queued read-ahead
	fd   int              // local copy for passthrough, or -1
	fsys *FS
}

// PassthroughFd offers the kernel the local copy, if there is one.
func (h *fileHandle) PassthroughFd() (int, bool) {
	if h.fd < 0 {
		return -1, false
	}
	h.fsys.Stats.Passthrough.Add(1)
	return h.fd, true
}

// stopped tells read-ahead to give up: the file was closed or its store
// path quarantined.
func (h *fileHandle) stopped(sp *storePath) func() bool {
	return func() bool { return h.stop.Load() || sp.quarantined() }
}

func (h *fileHandle) Release(ctx context.Context) syscall.Errno {
	h.stop.Store(true)
	if h.fd >= 0 {
		syscall.Close(h.fd)
		h.fd = -1
	}
	return 0
}

func (f *fileNode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	sp := f.sp
	sp.fs.Stats.Reads.Add(1)
	if sp.quarantined() {
		return nil, syscall.EIO
	}
	sp.touch()
	size := f.ln.Size
	if off >= size || len(dest) == 0 {
		return fuse.ReadResultData(nil), 0
	}
	end := min(off+int64(len(dest)), size)
	sp.noteRead(&f.Inode, f.ln, off, end) // nothing to push there (pagepush.go)
	if h, ok := fh.(*fileHandle); ok && h.fd >= 0 {
		sp.fs.Stats.PassthroughFellBack.Add(1)
	}
	if sp.fs.prefetch != nil {
		nOff, nEnd := f.ln.NarOffset+off, f.ln.NarOffset+end
		nOff, walked := sp.noteWalk(f.ln, nOff, nEnd)
		ra, stop := f.readahead(fh)
		if sp.fs.execs.is(ctx) {
			f.prefetchExec()
		}
		raFrom, raTo := ra.Observe(off, end-off, size)
		narFrom, narTo := sp.narRA.Observe(nOff, nEnd-nOff, sp.nar.Size())
		// A walk in the background fetches what lies ahead, up to its limit.
		if !sp.walk.on.Load() || nEnd >= sp.walk.limit.Load() {
			if raTo > raFrom {
				sp.fs.prefetch.Prefetch(sp.nar, f.ln.NarOffset+raFrom, f.ln.NarOffset+raTo, stop)
			}
			// Across files only once several were read one after the
			// other: a compiler reads a few files of a directory, in NAR
			// order too, and read-ahead past them is waste.
			if narTo > narFrom && walked >= narWalkFiles {
				if narTo = min(narTo, sp.runEnd(f.ln)); narTo > narFrom {
					sp.fs.prefetch.Prefetch(sp.nar, narFrom, narTo, sp.quarantined)
				}
			}
		}
	}
	// One bound for the whole read, whatever the DAG depth and sources.
	ctx, cancel := context.WithTimeout(ctx, sp.fs.cfg.ReadTimeout)
	defer cancel()
	start := time.Now()
	n, err := sp.nar.ReadAt(ctx, dest[:end-off], f.ln.NarOffset+off)
	sp.fs.Stats.ReadNanos.Add(int64(time.Since(start)))
	if err != nil && n < int(end-off) {
		return nil, sp.fs.readErrno(sp, err)
	}
	if sp.chk.NoteRead(f.ln, off, end) {
		// The last unread bytes of the store path: check the whole NAR
		// before serving them.
		if err := sp.verify(ctx, &f.Inode); err != nil {
			return nil, sp.fs.readErrno(sp, err)
		}
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// readahead returns the read-ahead state for a read on fh: the handle's,
// or, for reads without one, the file's own, shared by its readers.
func (f *fileNode) readahead(fh fs.FileHandle) (*fetch.Readahead, func() bool) {
	if h, ok := fh.(*fileHandle); ok && h.ra != nil {
		return h.ra, h.stopped(f.sp)
	}
	ra := f.ra.Load()
	if ra == nil {
		f.prefetchSmall(f.sp.quarantined)
		f.ra.CompareAndSwap(nil, fetch.NewReadahead(f.sp.fs.cfg.Readahead))
		ra = f.ra.Load()
	}
	return ra, f.sp.quarantined
}

func (f *FS) readErrno(sp *storePath, err error) syscall.Errno {
	if errors.Is(err, integrity.ErrQuarantined) {
		return syscall.EIO
	}
	e := errno(err)
	if e == syscall.EIO || e == syscall.ENOENT {
		f.log.Error("read failed", "path", sp.base, "err", err)
		return syscall.EIO
	}
	return e
}

// forget makes the kernel drop everything it cached of store path base:
// file pages (mapped ones included), attributes, symlink targets and
// directory listings, and the names under the path and its own entry in
// the root (see notify.go for why these go straight to the device).
// Whatever the kernel asks for again gets EIO. skip, if not nil, is the
// file being read: the kernel holds some of its pages locked until that
// read is answered, so its pages are dropped in the background, once it
// has been; everything else before forget returns (waiting at most
// forgetWait for the names: an entry waits for lookups in flight in its
// directory).
func (f *FS) forget(base string, skip *fs.Inode) {
	top := f.root.GetChild(base)
	if top == nil || !f.served.Load() {
		return
	}
	type entry struct {
		dir  *fs.Inode
		name string
	}
	var entries []entry
	var walk func(in *fs.Inode)
	walk = func(in *fs.Inode) {
		if in == skip {
			in.NotifyContent(-1, 0) // attributes now; never waits
			go f.dropPages(in)
		} else {
			f.dropPages(in)
		}
		for name, c := range in.Children() {
			walk(c)
			entries = append(entries, entry{in, name})
		}
	}
	walk(top)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, e := range entries {
			f.dropEntry(e.dir, e.name)
		}
		f.dropEntry(&f.root.Inode, base)
	}()
	select {
	case <-done:
	case <-time.After(forgetWait):
		f.log.Warn("kernel still forgetting a quarantined store path's names", "path", base)
	}
}

// forgetWait bounds how long a quarantining read waits for the kernel to
// drop the path's names.
const forgetWait = 2 * time.Second
