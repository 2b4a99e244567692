package prefetch

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/ipnix/ipnix/internal/atomicfile"
	"github.com/ipnix/ipnix/internal/blockfile"
	"github.com/ipnix/ipnix/narindex"
)

// The record of what was prefetched into a cache directory, DIR/prefetched:
//
//	ipnix-prefetched-1
//	closure <root hash-name> <unix seconds>
//	path <hash-name> <NAR root CID> <NarSize>
//	path ...
//	closure ...
//
// One closure per root named to `ipnix prefetch`, listing every store path
// of its closure (the root among them) with the root of its NAR's DAG, so
// that gc and stats need no substituter: the blocks a closure needs are
// found by walking those DAGs in the block store. It is written whole to a
// temporary file and renamed into place, under DIR/prefetched.lock.

// RecordName is the record's file name in the cache directory.
const RecordName = "prefetched"

const (
	recordHeader   = "ipnix-prefetched-1"
	maxRecordBytes = 64 << 20 // far more than any closure set needs
	maxRecordLine  = 4 << 10
)

// Record lists the closures prefetched into a cache directory.
type Record struct {
	Closures []Closure
}

// Closure is one prefetched closure.
type Closure struct {
	Root  string    // <hash>-<name> of the store path named
	Time  time.Time // when it was last prefetched (to the second)
	Paths []Path    // every store path of the closure, the root among them
}

// Path is a store path of a closure and its NAR.
type Path struct {
	Base    string  // <hash>-<name>
	Cid     cid.Cid // root of the UnixFS file holding the NAR
	NarSize uint64
}

// Find returns the closure whose root is root, or nil.
func (r *Record) Find(root string) *Closure {
	for i := range r.Closures {
		if r.Closures[i].Root == root {
			return &r.Closures[i]
		}
	}
	return nil
}

// Set adds c, replacing a closure with the same root.
func (r *Record) Set(c Closure) {
	if old := r.Find(c.Root); old != nil {
		*old = c
		return
	}
	r.Closures = append(r.Closures, c)
}

// Remove drops the closure whose root is root and reports whether there
// was one.
func (r *Record) Remove(root string) bool {
	for i := range r.Closures {
		if r.Closures[i].Root == root {
			r.Closures = append(r.Closures[:i], r.Closures[i+1:]...)
			return true
		}
	}
	return false
}

// Marshal writes the record in its file format.
func (r *Record) Marshal() []byte {
	var b bytes.Buffer
	b.WriteString(recordHeader + "\n")
	for _, c := range r.Closures {
		fmt.Fprintf(&b, "closure %s %d\n", c.Root, max(c.Time.Unix(), 0))
		for _, p := range c.Paths {
			fmt.Fprintf(&b, "path %s %s %d\n", p.Base, p.Cid, p.NarSize)
		}
	}
	return b.Bytes()
}

// ParseRecord reads a record. It is strict: anything but what Marshal
// writes is an error naming the line.
func ParseRecord(data []byte) (*Record, error) {
	if len(data) > maxRecordBytes {
		return nil, fmt.Errorf("prefetch record of %d bytes, more than %d", len(data), maxRecordBytes)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 512), maxRecordLine)
	r := &Record{}
	var cur *Closure
	var inClosure map[string]bool
	// finish checks the closure being read once its last path is in.
	finish := func(line int) error {
		if cur == nil {
			return nil
		}
		if !inClosure[cur.Root] {
			return fmt.Errorf("prefetch record, closure ending before line %d: its root %s is not among its paths", line, cur.Root)
		}
		return nil
	}
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if n == 1 {
			if line != recordHeader {
				return nil, fmt.Errorf("prefetch record line 1: %s, want %q", clip(line), recordHeader)
			}
			continue
		}
		f := strings.Split(line, " ")
		bad := func(format string, a ...any) error {
			return fmt.Errorf("prefetch record line %d (%s): %s", n, clip(line), fmt.Sprintf(format, a...))
		}
		switch f[0] {
		case "closure":
			if len(f) != 3 {
				return nil, bad("want: closure <hash>-<name> <unix seconds>")
			}
			if err := finish(n); err != nil {
				return nil, err
			}
			if _, err := narindex.ParseStorePathBase(f[1]); err != nil {
				return nil, bad("%v", err)
			}
			if r.Find(f[1]) != nil {
				return nil, bad("closure %s recorded twice", f[1])
			}
			secs, err := strconv.ParseInt(f[2], 10, 64)
			if err != nil || secs < 0 || secs > 1<<40 {
				return nil, bad("%q is not a time in unix seconds", f[2])
			}
			r.Closures = append(r.Closures, Closure{Root: f[1], Time: time.Unix(secs, 0)})
			cur, inClosure = &r.Closures[len(r.Closures)-1], map[string]bool{}
		case "path":
			if len(f) != 4 {
				return nil, bad("want: path <hash>-<name> <cid> <NarSize>")
			}
			if cur == nil {
				return nil, bad("a path before any closure")
			}
			if _, err := narindex.ParseStorePathBase(f[1]); err != nil {
				return nil, bad("%v", err)
			}
			if inClosure[f[1]] {
				return nil, bad("path %s twice in closure %s", f[1], cur.Root)
			}
			c, err := cid.Decode(f[2])
			if err != nil {
				return nil, bad("CID %q: %v", clip(f[2]), err)
			}
			if c.String() != f[2] {
				return nil, bad("CID %q is not written as this ipnix writes it (%s)", clip(f[2]), c)
			}
			size, err := strconv.ParseUint(f[3], 10, 64)
			if err != nil || size == 0 || size > 1<<50 {
				return nil, bad("%q is not a NAR size", f[3])
			}
			inClosure[f[1]] = true
			cur.Paths = append(cur.Paths, Path{Base: f[1], Cid: c, NarSize: size})
		default:
			return nil, bad("unknown line")
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("prefetch record line %d: %w", n+1, err)
	}
	if n == 0 {
		return nil, errors.New("prefetch record is empty (no header)")
	}
	if err := finish(n + 1); err != nil {
		return nil, err
	}
	return r, nil
}

// clip shortens a piece of the record for an error message.
func clip(s string) string {
	if len(s) > 120 {
		return strconv.Quote(s[:120]) + "..."
	}
	return strconv.Quote(s)
}

// LoadRecord reads the record in dir; no file is an empty record. Anything
// but a regular file of at most maxRecordBytes is refused before it is
// read (a FIFO would block the opening, a huge file fill memory).
func LoadRecord(dir string) (*Record, error) {
	name := filepath.Join(dir, RecordName)
	data, _, err := blockfile.ReadFollowing(name, maxRecordBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return &Record{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("prefetch record: %w", err)
	}
	r, err := ParseRecord(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, RecordName), err)
	}
	return r, nil
}

// Recorded reports whether dir holds a record naming any closure.
func Recorded(dir string) bool {
	r, err := LoadRecord(dir)
	return err == nil && len(r.Closures) > 0
}

// UpdateRecord changes the record in dir with change, under the record's
// lock (concurrent prefetches into one directory each see the other's
// closures), and writes it back when change returns nil.
func UpdateRecord(dir string, change func(*Record) error) error {
	lf, err := os.OpenFile(filepath.Join(dir, RecordName+".lock"), os.O_RDONLY|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("locking %s: %w", lf.Name(), err)
	}
	r, err := LoadRecord(dir)
	if err != nil {
		return err
	}
	if err := change(r); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, RecordName), r.Marshal(), 0o600)
}
