package publish

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// A publish that is killed leaves its temporary files behind: the NAR
// file being written (nar/.tmp-*), and narinfos and listings not yet
// renamed into place (.tmp-*). The next publish into the same directory
// removes those not written for staleTempAge. A publish still running
// writes its NAR file as the NAR streams, and renames the others at once,
// so none of its files is that old.
const staleTempAge = 24 * time.Hour

// sweepStaleTemps removes, from the cache directory to and its nar/
// directory, the regular files named .tmp-* last written before
// now-staleTempAge (symlinks and directories are left alone). What it
// cannot remove is logged: a publish does not fail over garbage.
func sweepStaleTemps(to string, now time.Time, log *slog.Logger) {
	var n int
	var bytes int64
	for _, dir := range []string{to, filepath.Join(to, "nar")} {
		entries, err := tempEntries(dir)
		if err != nil {
			log.Warn("looking for stale temporary files", "dir", dir, "err", err)
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), ".tmp-") || !e.Type().IsRegular() {
				continue
			}
			fi, err := e.Info() // lstat: a file replaced meanwhile is judged as it is now
			if err != nil || !fi.Mode().IsRegular() || now.Sub(fi.ModTime()) < staleTempAge {
				continue
			}
			p := filepath.Join(dir, e.Name())
			if err := os.Remove(p); err != nil {
				log.Warn("removing a stale temporary file", "file", p, "err", err)
				continue
			}
			n++
			bytes += fi.Size()
		}
	}
	if n > 0 {
		log.Info("removed temporary files left by an earlier publish", "files", n, "bytes", bytes, "older_than", staleTempAge)
	}
}

// tempEntries lists the entries of dir named .tmp-*, reading the directory
// in batches and unsorted: a cache directory may hold a narinfo, a
// listing and a NAR for each of a million store paths.
func tempEntries(dir string) ([]os.DirEntry, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []os.DirEntry
	for {
		batch, err := f.ReadDir(4096)
		for _, e := range batch {
			if strings.HasPrefix(e.Name(), ".tmp-") {
				out = append(out, e)
			}
		}
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}
