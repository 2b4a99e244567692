package fusefs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Local copies found at start are checked before use: every copy is
// hashed again against the manifest written beside it (see passthrough.go
// for the layout). Until the check has passed, reads go through verified
// blocks; a mismatch drops the directory.

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
		err := checkCopies(fl.ctx, p)
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
			fl.stats.LocalCopiesDropped.Add(1)
			fl.log.Warn("local copies differ from their manifest; dropped", "dir", p, "err", err)
			fl.dropLocked(nh)
		}
	})
}

// usable reports whether sp's local copies may be handed to the kernel:
// they exist and were written or checked by this process.
func (fl *files) usable(sp *storePath) bool {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	_, checking := fl.state[sp.copiesKey]
	return !checking && fl.lru.Contains(sp.copiesKey)
}

// checkCopies hashes every copy in dir p against its manifest, and
// refuses files the manifest does not name.
func checkCopies(ctx context.Context, p string) error {
	data, err := os.ReadFile(filepath.Join(p, "manifest"))
	if err != nil {
		return err
	}
	want := map[string]string{"manifest": ""}
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) != 3 {
			return fmt.Errorf("manifest line %q", strings.TrimSpace(line))
		}
		size, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || size < 0 {
			return fmt.Errorf("manifest line %q", strings.TrimSpace(line))
		}
		if _, err := strconv.ParseInt(f[0], 10, 64); err != nil {
			return fmt.Errorf("manifest line %q", strings.TrimSpace(line))
		}
		want[f[0]] = f[2]
		fi, err := os.Stat(filepath.Join(p, f[0]))
		if err != nil {
			return err
		}
		if fi.Size() != size {
			return fmt.Errorf("copy %s is %d bytes, manifest says %d", f[0], fi.Size(), size)
		}
	}
	ents, err := os.ReadDir(p)
	if err != nil {
		return err
	}
	for _, e := range ents {
		sum, ok := want[e.Name()]
		if !ok {
			return fmt.Errorf("%s is not in the manifest", e.Name())
		}
		if e.Name() == "manifest" {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		got, err := hashFile(filepath.Join(p, e.Name()))
		if err != nil {
			return err
		}
		if got != sum {
			return fmt.Errorf("copy %s has SHA-256 %s, manifest says %s", e.Name(), got, sum)
		}
	}
	return nil
}

func hashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
