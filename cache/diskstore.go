package cache

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"golang.org/x/sync/singleflight"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/internal/atomicfile"
	"github.com/ipnix/ipnix/internal/blockfile"
)

// The on-disk format, version 1:
//
//	DIR/VERSION                  "ipnix-blocks-1\n"
//	DIR/LOCK                     flock(2): shared while a store is open
//	                             (mount, serve, prefetch), exclusive for gc
//	DIR/QUOTA                    the byte quota of the last store opened, in
//	                             decimal (for `ipnix cache stats`)
//	DIR/blocks/XY/<hex>          one block's bytes; <hex> is the lowercase hex
//	                             of its multihash, XY its last two characters;
//	                             mode 0600, or 0400 when pinned
//	DIR/blocks/XY/.tmp-*         a write in progress (removed at open)
//
// There is no index to go stale or tear: the directory is the index. Files
// are written to a temporary name and renamed into place; they are not
// fsynced, because every read re-hashes the block against its CID, so a file
// torn by a crash is found, deleted and fetched again. A file's mtime records
// (to within a minute) when it was last used, which orders eviction across
// restarts.
//
// A pinned block (a prefetched closure needs it: see Pin) is never evicted
// to stay under quota, nor dropped by Release, by any process: the mark is
// the file's mode, so a store opened before the pin learns of it at the
// latest when it would evict the block. Only GC, holding DIR/LOCK
// exclusively, unpins. A store also takes in block files other processes
// wrote after it opened, when it misses them.
const diskVersion = "ipnix-blocks-1"

// Modes of block files: pinned ones are read-only.
const (
	modeBlock  = 0o600
	modePinned = 0o400
)

// pinnedMode reports whether a block file's mode marks it pinned.
func pinnedMode(m fs.FileMode) bool { return m.Perm()&0o200 == 0 }

// touchEvery bounds how often a hit updates a file's mtime.
const touchEvery = time.Minute

// DiskStats counts disk cache traffic; fields are updated atomically.
type DiskStats struct {
	Hits      atomic.Int64
	Misses    atomic.Int64
	Evictions atomic.Int64
	Corrupt   atomic.Int64 // files found torn or corrupted, deleted and fetched again
	Adopted   atomic.Int64 // block files another process wrote, found on a miss
	// Unanswered counts block file reads that did not answer within
	// their bound (a disk that stopped answering): the block is asked of
	// the layer below, and the file left as it is.
	Unanswered atomic.Int64
}

// Disk is an on-disk block store with a byte quota in front of another
// BlockGetter, shared by every reader of a mount and kept across restarts.
type Disk struct {
	src   fetch.BlockGetter
	dir   string
	max   int64
	Stats DiskStats
	// Timeout bounds one block file read (default
	// fetch.DefaultBlockTimeout); set before use.
	Timeout time.Duration

	mu          sync.Mutex
	lru         *simplelru.LRU[string, diskEntry] // unpinned blocks, least recently used first
	pinned      map[string]diskEntry              // pinned blocks, never evicted
	bytes       int64                             // of all blocks
	pinnedBytes int64

	lock     *os.File // DIR/LOCK, held shared while open
	inflight singleflight.Group
	reads    *blockfile.Limiter // block file reads running at once
}

type diskEntry struct {
	size    int64
	touched time.Time
}

// OpenDisk opens (or creates) the store in dir, holding at most maxBytes of
// blocks (pinned ones may exceed it: they are never evicted), in front of
// src. It holds dir's lock shared until Close, waiting a while for a GC
// that holds it.
func OpenDisk(dir string, maxBytes int64, src fetch.BlockGetter) (*Disk, error) {
	if err := os.MkdirAll(filepath.Join(dir, "blocks"), 0o700); err != nil {
		return nil, err
	}
	// The cache is the mount's own state, like a Nix store: nobody else
	// may write (or read) it.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	lock, err := lockShared(dir)
	if err != nil {
		return nil, err
	}
	d := &Disk{src: src, dir: dir, max: maxBytes, lock: lock, pinned: map[string]diskEntry{}, reads: blockfile.NewLimiter(blockfile.DefaultPending)}
	if err := d.open(); err != nil {
		lock.Close()
		return nil, err
	}
	return d, nil
}

// open checks or writes the version, records the quota and loads the index.
func (d *Disk) open() error {
	if err := checkVersion(d.dir, true); err != nil {
		return err
	}
	// For `ipnix cache stats` only: a failure to record it costs nothing.
	q := filepath.Join(d.dir, quotaName)
	if old, err := os.ReadFile(q); err != nil || strings.TrimSpace(string(old)) != strconv.FormatInt(d.max, 10) {
		atomicfile.Write(q, []byte(strconv.FormatInt(d.max, 10)+"\n"), 0o600)
	}
	// Evictions and removals are handled where they happen (trim, forget):
	// an eviction must first look whether another process pinned the block.
	d.lru, _ = simplelru.NewLRU[string, diskEntry](math.MaxInt32, nil)
	return d.load()
}

// quotaName is the file recording the quota of the last store opened.
const quotaName = "QUOTA"

// checkVersion accepts a store of this format in dir; with create, a
// directory without VERSION becomes one.
func checkVersion(dir string, create bool) error {
	vfile := filepath.Join(dir, "VERSION")
	switch v, err := os.ReadFile(vfile); {
	case errors.Is(err, fs.ErrNotExist) && create:
		return os.WriteFile(vfile, []byte(diskVersion+"\n"), 0o600)
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s holds no ipnix block store (no VERSION file): is it the --cache-dir of a mount or prefetch?", dir)
	case err != nil:
		return err
	case strings.TrimSpace(string(v)) != diskVersion:
		return fmt.Errorf("cache directory %s holds format %q, this ipnix uses %q: remove it or choose another", dir, strings.TrimSpace(string(v)), diskVersion)
	}
	return nil
}

// load rebuilds the index from the files, oldest first, and trims to quota.
func (d *Disk) load() error {
	type found struct {
		key    string
		size   int64
		mtime  time.Time
		pinned bool
	}
	var all []found
	root := filepath.Join(d.dir, "blocks")
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		name := e.Name()
		raw, herr := hex.DecodeString(name)
		if strings.HasPrefix(name, ".tmp-") || herr != nil || len(raw) == 0 {
			os.Remove(p)
			return nil
		}
		fi, err := e.Info()
		if err != nil {
			return nil
		}
		all = append(all, found{string(raw), fi.Size(), fi.ModTime(), pinnedMode(fi.Mode())})
		return nil
	})
	if err != nil {
		return err
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mtime.Before(all[j].mtime) })
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, f := range all {
		d.add(f.key, diskEntry{f.size, f.mtime}, f.pinned)
	}
	d.trim()
	return nil
}

// add indexes a block that is not indexed yet; d.mu held.
func (d *Disk) add(key string, e diskEntry, pinned bool) {
	if pinned {
		d.pinned[key] = e
		d.pinnedBytes += e.size
	} else {
		d.lru.Add(key, e)
	}
	d.bytes += e.size
}

// entry finds key in the index, refreshing its recency; d.mu held.
func (d *Disk) entry(key string) (e diskEntry, pinned, ok bool) {
	if e, ok := d.pinned[key]; ok {
		return e, true, true
	}
	e, ok = d.lru.Get(key)
	return e, false, ok
}

// unindex drops key from the index; d.mu held. It reports whether key
// was there.
func (d *Disk) unindex(key string) bool {
	if e, ok := d.pinned[key]; ok {
		delete(d.pinned, key)
		d.pinnedBytes -= e.size
		d.bytes -= e.size
		return true
	}
	if e, ok := d.lru.Peek(key); ok {
		d.lru.Remove(key)
		d.bytes -= e.size
		return true
	}
	return false
}

// trim evicts least recently used unpinned blocks until under quota, or
// until only pinned ones are left; d.mu held. A block another process
// pinned since it was indexed is kept, and indexed as pinned.
func (d *Disk) trim() {
	for d.bytes > d.max {
		key, e, ok := d.lru.RemoveOldest()
		if !ok {
			return
		}
		p := d.path(key)
		if fi, err := os.Lstat(p); err == nil && pinnedMode(fi.Mode()) {
			d.pinned[key] = e
			d.pinnedBytes += e.size
			continue
		}
		d.bytes -= e.size
		os.Remove(p)
		d.Stats.Evictions.Add(1)
	}
}

func (d *Disk) path(key string) string { return blockPath(d.dir, key) }

// blockPath is where the block of multihash key lives in the store in dir.
func blockPath(dir, key string) string {
	h := hex.EncodeToString([]byte(key))
	return filepath.Join(dir, "blocks", h[len(h)-2:], h)
}

// GetBlock returns the block from disk, checked against c, or fetches it
// from the layer below and stores it.
func (d *Disk) GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	key := string(c.Hash())
	data, ok, indexed := d.read(ctx, key, c)
	if ok {
		d.Stats.Hits.Add(1)
		return blocks.NewBlockWithCid(data, c)
	}
	if !indexed { // another process may have written it since
		if data, ok, _ := d.adopt(ctx, key, c); ok {
			d.Stats.Hits.Add(1)
			return blocks.NewBlockWithCid(data, c)
		}
	}
	d.Stats.Misses.Add(1)
	return fetchShared(ctx, &d.inflight, d.src, key, c, d.write)
}

// read returns the stored bytes of key if indexed and intact. A file that
// is unreadable or does not hash to c is deleted and counted; one that
// does not answer in time is counted and left. indexed tells whether the
// index had key.
func (d *Disk) read(ctx context.Context, key string, c cid.Cid) (data []byte, ok, indexed bool) {
	d.mu.Lock()
	e, pinned, indexed := d.entry(key)
	touch := indexed && time.Since(e.touched) > touchEvery
	if touch {
		e.touched = time.Now()
		if pinned {
			d.pinned[key] = e
		} else {
			d.lru.Add(key, e)
		}
	}
	d.mu.Unlock()
	if !indexed {
		return nil, false, false
	}
	p := d.path(key)
	data, _, err := readBlockFile(ctx, d.reads, p, d.Timeout)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		d.forget(key)
		return nil, false, true
	case blockfile.Unanswered(err):
		d.noteUnanswered(ctx)
		return nil, false, true
	case err != nil || int64(len(data)) != e.size || fetch.CheckBlock(c, data) != nil:
		d.Stats.Corrupt.Add(1)
		d.forget(key)
		return nil, false, true
	}
	if touch {
		now := time.Now()
		os.Chtimes(p, now, now)
	}
	return data, true, true
}

// noteUnanswered counts a read that did not answer, unless its caller
// gave up on it first (a read the kernel interrupted, a deadline of the
// caller's): that says nothing of the disk.
func (d *Disk) noteUnanswered(ctx context.Context) {
	if ctx.Err() == nil {
		d.Stats.Unanswered.Add(1)
	}
}

// adopt indexes and returns the block file of key that another process
// (a prefetch, another mount) wrote after this store was opened, if it is
// there and intact; a damaged one is deleted and counted, one that does
// not answer in time counted and left.
//
// unanswered is the read's error when it did not answer: the file may be
// there, intact.
func (d *Disk) adopt(ctx context.Context, key string, c cid.Cid) (data []byte, ok bool, unanswered error) {
	p := d.path(key)
	data, fi, err := readBlockFile(ctx, d.reads, p, d.Timeout)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if blockfile.Unanswered(err) {
		d.noteUnanswered(ctx)
		return nil, false, err
	}
	if err != nil || fetch.CheckBlock(c, data) != nil {
		d.Stats.Corrupt.Add(1)
		os.Remove(p)
		return nil, false, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, _, ok := d.entry(key); !ok {
		d.add(key, diskEntry{fi.Size(), fi.ModTime()}, pinnedMode(fi.Mode()))
		d.Stats.Adopted.Add(1)
		d.trim()
	}
	return data, true, nil
}

// write stores a verified block; failures (a full disk) only mean it is
// not cached. A block held already is left as it is: rewriting it would
// unpin it.
func (d *Disk) write(key string, data []byte) {
	size := int64(len(data))
	if size > d.max {
		return
	}
	d.mu.Lock()
	_, _, held := d.entry(key)
	d.mu.Unlock()
	if held {
		return
	}
	p := d.path(key)
	if fi, err := os.Lstat(p); err == nil && pinnedMode(fi.Mode()) && fi.Size() == size {
		// Pinned by another process since this store was opened; reads
		// check it against its CID as any other.
		d.mu.Lock()
		if _, _, ok := d.entry(key); !ok {
			d.add(key, diskEntry{size, fi.ModTime()}, true)
			d.Stats.Adopted.Add(1)
		}
		d.mu.Unlock()
		return
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if werr != nil || cerr != nil || os.Rename(tmp.Name(), p) != nil {
		os.Remove(tmp.Name())
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.unindex(key)
	d.add(key, diskEntry{size, time.Now()}, false)
	d.trim()
}

// forget drops key from the index and deletes its file, pinned or not.
func (d *Disk) forget(key string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.unindex(key)
	os.Remove(d.path(key))
}

// Remove drops the block named by c, if stored, pinned or not (a
// quarantined path's blocks leave every cache).
func (d *Disk) Remove(c cid.Cid) { d.forget(string(c.Hash())) }

// Put stores a block that arrived by another path (a batched fetch); the
// caller vouches that it was verified.
func (d *Disk) Put(b blocks.Block) { d.write(string(b.Cid().Hash()), b.RawData()) }

// Bytes is the amount of block data stored.
func (d *Disk) Bytes() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.bytes
}

// Len is the number of blocks stored.
func (d *Disk) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lru.Len() + len(d.pinned)
}

// Max is the quota the store was opened with.
func (d *Disk) Max() int64 { return d.max }

// Dir is the store's directory.
func (d *Disk) Dir() string { return d.dir }

// Close releases the directory's lock. The store must not be used after.
func (d *Disk) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lock == nil {
		return nil
	}
	err := d.lock.Close()
	d.lock = nil
	return err
}
