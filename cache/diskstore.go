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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"golang.org/x/sync/singleflight"

	"github.com/ipnix/ipnix/fetch"
)

// The on-disk format, version 1:
//
//	DIR/VERSION                  "ipnix-blocks-1\n"
//	DIR/blocks/XY/<hex>          one block's bytes; <hex> is the lowercase hex
//	                             of its multihash, XY its last two characters
//	DIR/blocks/XY/.tmp-*         a write in progress (removed at open)
//
// There is no index to go stale or tear: the directory is the index. Files
// are written to a temporary name and renamed into place; they are not
// fsynced, because every read re-hashes the block against its CID, so a file
// torn by a crash is found, deleted and fetched again. A file's mtime records
// (to within a minute) when it was last used, which orders eviction across
// restarts.
const diskVersion = "ipnix-blocks-1"

// touchEvery bounds how often a hit updates a file's mtime.
const touchEvery = time.Minute

// DiskStats counts disk cache traffic; fields are updated atomically.
type DiskStats struct {
	Hits      atomic.Int64
	Misses    atomic.Int64
	Evictions atomic.Int64
	Corrupt   atomic.Int64 // files found torn or corrupted, deleted and fetched again
}

// Disk is an on-disk block store with a byte quota in front of another
// BlockGetter, shared by every reader of a mount and kept across restarts.
type Disk struct {
	src   fetch.BlockGetter
	dir   string
	max   int64
	Stats DiskStats

	mu    sync.Mutex
	lru   *simplelru.LRU[string, diskEntry]
	bytes int64

	inflight singleflight.Group
}

type diskEntry struct {
	size    int64
	touched time.Time
}

// OpenDisk opens (or creates) the store in dir, holding at most maxBytes of
// blocks, in front of src.
func OpenDisk(dir string, maxBytes int64, src fetch.BlockGetter) (*Disk, error) {
	if err := os.MkdirAll(filepath.Join(dir, "blocks"), 0o700); err != nil {
		return nil, err
	}
	// The cache is the mount's own state, like a Nix store: nobody else
	// may write (or read) it.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	vfile := filepath.Join(dir, "VERSION")
	switch v, err := os.ReadFile(vfile); {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.WriteFile(vfile, []byte(diskVersion+"\n"), 0o600); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, err
	case strings.TrimSpace(string(v)) != diskVersion:
		return nil, fmt.Errorf("cache directory %s holds format %q, this ipnix uses %q: remove it or choose another", dir, strings.TrimSpace(string(v)), diskVersion)
	}
	d := &Disk{src: src, dir: dir, max: maxBytes}
	d.lru, _ = simplelru.NewLRU[string, diskEntry](math.MaxInt32, func(key string, e diskEntry) {
		d.bytes -= e.size
		os.Remove(d.path(key))
	})
	if err := d.load(); err != nil {
		return nil, err
	}
	return d, nil
}

// load rebuilds the index from the files, oldest first, and trims to quota.
func (d *Disk) load() error {
	type found struct {
		key   string
		size  int64
		mtime time.Time
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
		all = append(all, found{string(raw), fi.Size(), fi.ModTime()})
		return nil
	})
	if err != nil {
		return err
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mtime.Before(all[j].mtime) })
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, f := range all {
		d.lru.Add(f.key, diskEntry{f.size, f.mtime})
		d.bytes += f.size
	}
	d.trim()
	return nil
}

// trim evicts least recently used blocks until under quota; d.mu held.
func (d *Disk) trim() {
	for d.bytes > d.max {
		if _, _, ok := d.lru.RemoveOldest(); !ok {
			return
		}
		d.Stats.Evictions.Add(1)
	}
}

func (d *Disk) path(key string) string {
	h := hex.EncodeToString([]byte(key))
	return filepath.Join(d.dir, "blocks", h[len(h)-2:], h)
}

// GetBlock returns the block from disk, checked against c, or fetches it
// from the layer below and stores it.
func (d *Disk) GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	key := string(c.Hash())
	if data, ok := d.read(key, c); ok {
		d.Stats.Hits.Add(1)
		return blocks.NewBlockWithCid(data, c)
	}
	d.Stats.Misses.Add(1)
	return fetchShared(ctx, &d.inflight, d.src, key, c, d.write)
}

// read returns the stored bytes of key if present and intact. A file that
// is unreadable or does not hash to c is deleted and counted.
func (d *Disk) read(key string, c cid.Cid) ([]byte, bool) {
	d.mu.Lock()
	e, ok := d.lru.Get(key)
	touch := ok && time.Since(e.touched) > touchEvery
	if touch {
		e.touched = time.Now()
		d.lru.Add(key, e)
	}
	d.mu.Unlock()
	if !ok {
		return nil, false
	}
	p := d.path(key)
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		d.forget(key)
		return nil, false
	}
	if err != nil || int64(len(data)) != e.size || fetch.CheckBlock(c, data) != nil {
		d.Stats.Corrupt.Add(1)
		d.forget(key)
		return nil, false
	}
	if touch {
		now := time.Now()
		os.Chtimes(p, now, now)
	}
	return data, true
}

// write stores a verified block; failures (a full disk) only mean it is
// not cached.
func (d *Disk) write(key string, data []byte) {
	size := int64(len(data))
	if size > d.max {
		return
	}
	p := d.path(key)
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
	if old, ok := d.lru.Peek(key); ok {
		d.bytes -= old.size
	}
	d.lru.Add(key, diskEntry{size, time.Now()})
	d.bytes += size
	d.trim()
}

// forget drops key from the index and deletes its file.
func (d *Disk) forget(key string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.lru.Remove(key) {
		os.Remove(d.path(key))
	}
}

// Remove drops the block named by c, if stored.
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
	return d.lru.Len()
}

// Close releases nothing today (the directory is the index); it exists so
// callers need not change when that does.
func (d *Disk) Close() error { return nil }
