package mirror

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ipnix/ipnix/narindex"
)

// HashPart finds the hash part in what a user gives to name a store path:
// /nix/store/<hash>-<name> (or a path inside it), a symlink into the store
// (a result link), <hash>-<name>, <hash>, or <hash>.narinfo. A bare hash
// part is checked when its narinfo is asked for.
func HashPart(arg string) (string, error) {
	s := strings.TrimSpace(arg)
	if sp, err := narindex.StorePathArg(s); err == nil {
		return sp.Hash, nil
	} else if s == "" || strings.ContainsAny(s, "/-") {
		return "", err
	}
	if h := strings.TrimSuffix(s, ".narinfo"); h != "" {
		return h, nil
	}
	return "", fmt.Errorf("%q names no store path", arg)
}

// ArgEntries are the entries for arguments a user gave.
func ArgEntries(args []string) iter.Seq[Entry] {
	return func(yield func(Entry) bool) {
		for _, a := range args {
			h, err := HashPart(a)
			if !yield(Entry{Name: a, Hash: h, Err: err}) {
				return
			}
		}
	}
}

// LineEntries are the entries named by r, one a line; blank lines and lines
// starting with # are skipped. A line that names no store path is an entry
// with Err set; an error reading r ends the sequence with one.
func LineEntries(r io.Reader, name string) iter.Seq[Entry] {
	return func(yield func(Entry) bool) {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 64<<10)
		n := 0
		for sc.Scan() {
			n++
			line := strings.TrimSpace(sc.Text())
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			h, err := HashPart(line)
			if err != nil {
				err = fmt.Errorf("%s line %d: %w", name, n, err)
			}
			if !yield(Entry{Name: line, Hash: h, Err: err}) {
				return
			}
		}
		if err := sc.Err(); err != nil {
			yield(Entry{Name: name, Err: fmt.Errorf("reading %s after line %d: %w", name, n, err)})
		}
	}
}

// DirEntries lists the narinfos of a binary cache directory, sorted by
// name. A file named *.narinfo whose name is no hash part is an entry that
// fails when its narinfo is asked for. One that is not a regular file (a
// FIFO, whose opening would wait for a writer for ever; a device; a
// directory), or a symlink leading out of dir or to anything but a regular
// file, is an entry with Err set, never opened: whoever can write to the
// cache must not make the mirror hang or read (and quote in its log) a file
// of the mirror's user elsewhere.
func DirEntries(dir string) ([]Entry, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, err
	}
	var entries []Entry
	for {
		batch, err := f.ReadDir(4096)
		for _, de := range batch {
			n := de.Name()
			if !strings.HasSuffix(n, ".narinfo") {
				continue
			}
			entries = append(entries, Entry{Name: n, Hash: strings.TrimSuffix(n, ".narinfo"), Err: checkEntryFile(real, de)})
		}
		if err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("listing %s: %w", dir, err)
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	return entries, nil
}

// checkEntryFile says why de, in the directory whose real path is dir,
// is not to be read as a narinfo, or nil.
func checkEntryFile(dir string, de fs.DirEntry) error {
	t := de.Type()
	switch {
	case t.IsRegular():
		return nil
	case t&fs.ModeSymlink == 0:
		return fmt.Errorf("%s is not a regular file (%v)", de.Name(), t)
	}
	target, err := filepath.EvalSymlinks(filepath.Join(dir, de.Name()))
	if err != nil {
		return fmt.Errorf("%s: %w", de.Name(), err)
	}
	if rel, err := filepath.Rel(dir, target); err != nil || rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) {
		return fmt.Errorf("%s is a symlink leading out of the cache directory", de.Name())
	}
	fi, err := os.Stat(target)
	if err != nil {
		return fmt.Errorf("%s: %w", de.Name(), err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is a symlink to something that is not a regular file (%v)", de.Name(), fi.Mode().Type())
	}
	return nil
}
