package fusefs

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Local copies found at start are checked before use: every copy is
// hashed again against the manifest written beside it (see passthrough.go
// for the layout), all of a directory in the background from the first
// lookup of a path with its NarHash, and one copy at a time, on its first
// open, when that open comes before the background pass is done. A copy
// being hashed by one of them is not hashed again by the other, which
// waits for its result instead. A copy is never handed to the kernel
// unchecked; a mismatch drops the directory.

// check starts hashing, in the background, the copies of the NAR whose
// hash is nh if they were found at start and not checked yet, and marks
// them used.
func (fl *files) check(nh string) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if _, ok := fl.lru.Get(nh); !ok || fl.ctx.Err() != nil {
		return
	}
	p := filepath.Join(fl.dir, nh)
	now := time.Now()
	os.Chtimes(p, now, now) // the LRU order for the next start
	if st, ok := fl.state[nh]; !ok || st != unchecked {
		return
	}
	fl.state[nh] = checking
	fl.wg.Go(func() {
		err := checkCopies(fl.ctx, p, fl.stats, func(name string) (func(ok bool), bool, error) {
			key := nh + "/" + name
			if finish, hash := fl.beginHash(key); hash {
				return finish, true, nil
			}
			fl.mu.Lock()
			defer fl.mu.Unlock()
			if !fl.checked[key] {
				return nil, false, fmt.Errorf("copy %s did not match its manifest", name)
			}
			return nil, false, nil
		})
		fl.mu.Lock()
		defer fl.mu.Unlock()
		switch {
		case err == nil:
			delete(fl.state, nh)
			fl.stats.LocalCopiesChecked.Add(1)
			fl.log.Debug("local copies checked", "dir", p)
		case fl.ctx.Err() != nil:
			fl.state[nh] = unchecked
		default:
			fl.log.Warn("local copies differ from their manifest; dropped", "dir", p, "err", err)
			fl.dropLocked(nh)
			fl.stats.LocalCopiesDropped.Add(1)
		}
	})
}

// checkOne checks, before its first use, the copy open as fd of the file
// at NAR offset off in directory nh, when that directory was found at
// start and its background check has not finished: it hashes the copy
// against the manifest (the kernel then reads it from the page cache).
// A mismatch drops the directory.
func (fl *files) checkOne(nh string, off int64, fd int) error {
	key := nh + "/" + strconv.FormatInt(off, 10)
	fl.mu.Lock()
	// The descriptor may have been opened just before the directory was
	// dropped (a failed check, a quarantine, eviction): only copies still
	// held, and written or checked by this process, are used.
	held := fl.lru.Contains(nh)
	_, pending := fl.state[nh]
	done := fl.checked[key]
	fl.mu.Unlock()
	if !held {
		return fmt.Errorf("local copies %s were dropped", nh)
	}
	if !pending || done {
		return nil
	}
	finish, hash := fl.beginHash(key)
	if !hash {
		// The background pass hashed it meanwhile.
		fl.mu.Lock()
		defer fl.mu.Unlock()
		if !fl.checked[key] || !fl.lru.Contains(nh) {
			return fmt.Errorf("local copy %s/%d did not match its manifest", nh, off)
		}
		return nil
	}
	p := filepath.Join(fl.dir, nh)
	err := checkCopy(p, off, fd, fl.stats)
	finish(err == nil)
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if err == nil && !fl.lru.Contains(nh) {
		return fmt.Errorf("local copies %s were dropped", nh)
	}
	if err != nil {
		fl.log.Warn("local copies differ from their manifest; dropped", "dir", p, "err", err)
		fl.dropLocked(nh)
		fl.stats.LocalCopiesDropped.Add(1)
		return err
	}
	return nil
}

// beginHash claims the hashing of the copy named key ("<dir>/<offset>"):
// it waits while another goroutine hashes it, and reports hash false when
// that one found it intact (or it was checked before). Otherwise the
// caller hashes it and calls finish with the outcome, which records a
// match in fl.checked.
func (fl *files) beginHash(key string) (finish func(ok bool), hash bool) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	for {
		if fl.checked[key] {
			return nil, false
		}
		ch := fl.hashing[key]
		if ch == nil {
			break
		}
		fl.mu.Unlock()
		<-ch
		fl.mu.Lock()
		if !fl.checked[key] {
			return nil, false // it failed: the directory is dropped
		}
	}
	ch := make(chan struct{})
	fl.hashing[key] = ch
	return func(ok bool) {
		fl.mu.Lock()
		defer fl.mu.Unlock()
		if ok {
			fl.checked[key] = true
		}
		delete(fl.hashing, key)
		close(ch)
	}, true
}

// checkCopy hashes the copy open as fd against the manifest line for off.
func checkCopy(p string, off int64, fd int, stats *Stats) error {
	want, err := readManifest(p)
	if err != nil {
		return err
	}
	sum, ok := want[strconv.FormatInt(off, 10)]
	if !ok {
		return fmt.Errorf("copy %d is not in the manifest", off)
	}
	h := sum.kind.new()
	buf := make([]byte, 1<<20)
	for pos := int64(0); ; {
		n, err := syscall.Pread(fd, buf, pos)
		if n > 0 {
			h.Write(buf[:n])
			pos += int64(n)
			stats.LocalCopyBytesHashed.Add(int64(n))
		}
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
	}
	if got := sum.kind.format(h); got != sum.sum {
		return fmt.Errorf("copy %d has checksum %s, manifest says %s", off, got, sum.sum)
	}
	return nil
}

type manifestEntry struct {
	size int64
	kind copySum
	sum  string
}

// readManifest parses the manifest of the copies in directory p, by file
// name (the NAR offset in decimal).
func readManifest(p string) (map[string]manifestEntry, error) {
	data, err := os.ReadFile(filepath.Join(p, "manifest"))
	if err != nil {
		return nil, err
	}
	out := map[string]manifestEntry{}
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		bad := fmt.Errorf("manifest line %q", strings.TrimSpace(line))
		if len(f) != 3 {
			return nil, bad
		}
		kind, ok := parseCopySum(f[2])
		if !ok {
			return nil, bad
		}
		size, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || size < 0 {
			return nil, bad
		}
		if off, err := strconv.ParseInt(f[0], 10, 64); err != nil || off < 0 || strconv.FormatInt(off, 10) != f[0] {
			return nil, bad
		}
		out[f[0]] = manifestEntry{size, kind, f[2]}
	}
	return out, nil
}

// checkCopies hashes every copy in dir p against its manifest, and
// refuses files the manifest does not name. begin claims each copy before
// it is hashed (see files.beginHash): one it need not hash is skipped,
// one that failed elsewhere fails the directory.
func checkCopies(ctx context.Context, p string, stats *Stats, begin func(name string) (finish func(ok bool), hash bool, err error)) error {
	want, err := readManifest(p)
	if err != nil {
		return err
	}
	ents, err := os.ReadDir(p)
	if err != nil {
		return err
	}
	if len(ents) != len(want)+1 {
		return fmt.Errorf("%d files for %d copies in the manifest", len(ents)-1, len(want))
	}
	for _, e := range ents {
		if e.Name() == "manifest" {
			continue
		}
		m, ok := want[e.Name()]
		if !ok {
			return fmt.Errorf("%s is not in the manifest", e.Name())
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		if fi.Size() != m.size {
			return fmt.Errorf("copy %s is %d bytes, manifest says %d", e.Name(), fi.Size(), m.size)
		}
		finish, hash, err := begin(e.Name())
		if err != nil {
			return err
		}
		if !hash {
			continue
		}
		got, err := hashFile(filepath.Join(p, e.Name()), m.kind, stats)
		finish(err == nil && got == m.sum)
		if err != nil {
			return err
		}
		if got != m.sum {
			return fmt.Errorf("copy %s has checksum %s, manifest says %s", e.Name(), got, m.sum)
		}
	}
	return nil
}

// hashFile gives the checksum of kind kind of the file at p.
func hashFile(p string, kind copySum, stats *Stats) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := kind.new()
	n, err := io.Copy(h, f)
	stats.LocalCopyBytesHashed.Add(n)
	if err != nil {
		return "", err
	}
	return kind.format(h), nil
}
