package narindex

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
)

// DumpPath writes the NAR of the file, directory or symlink at p, byte for
// byte what `nix-store --dump p` writes.
func DumpPath(w io.Writer, p string) error {
	p = filepath.Clean(p)
	dir, base := filepath.Split(p)
	if base == "" {
		return fmt.Errorf("cannot dump %q", p)
	}
	if dir == "" {
		dir = "."
	}
	return DumpFS(w, os.DirFS(dir), base)
}

// DumpFS writes the NAR of name in fsys. Symlinks are read through
// fs.ReadLinkFS; entries are sorted bytewise, as Nix sorts them; a file is
// executable when its owner may execute it.
func DumpFS(w io.Writer, fsys fs.FS, name string) error {
	nw := &narWriter{w: bufio.NewWriterSize(w, 256<<10), fsys: fsys}
	nw.str(narMagic)
	if err := nw.node(name); err != nil {
		return err
	}
	if nw.err != nil {
		return nw.err
	}
	return nw.w.Flush()
}

type narWriter struct {
	w    *bufio.Writer
	fsys fs.FS
	err  error
	buf  [8]byte
	zero [8]byte
}

func (nw *narWriter) u64(n uint64) {
	if nw.err != nil {
		return
	}
	binary.LittleEndian.PutUint64(nw.buf[:], n)
	_, nw.err = nw.w.Write(nw.buf[:])
}

func (nw *narWriter) pad(n int64) {
	if p := (8 - n%8) % 8; p > 0 && nw.err == nil {
		_, nw.err = nw.w.Write(nw.zero[:p])
	}
}

func (nw *narWriter) str(s string) {
	nw.u64(uint64(len(s)))
	if nw.err == nil {
		_, nw.err = nw.w.WriteString(s)
	}
	nw.pad(int64(len(s)))
}

func (nw *narWriter) node(name string) error {
	fi, err := fs.Lstat(nw.fsys, name)
	if err != nil {
		return err
	}
	nw.str("(")
	nw.str("type")
	switch m := fi.Mode(); {
	case m.IsRegular():
		nw.str("regular")
		if m&0o100 != 0 {
			nw.str("executable")
			nw.str("")
		}
		nw.str("contents")
		if err := nw.contents(name, fi.Size()); err != nil {
			return err
		}
	case m.IsDir():
		nw.str("directory")
		entries, err := fs.ReadDir(nw.fsys, name) // sorted by name, bytewise
		if err != nil {
			return err
		}
		for _, e := range entries {
			nw.str("entry")
			nw.str("(")
			nw.str("name")
			nw.str(e.Name())
			nw.str("node")
			if err := nw.node(path.Join(name, e.Name())); err != nil {
				return err
			}
			nw.str(")")
		}
	case m&fs.ModeSymlink != 0:
		target, err := fs.ReadLink(nw.fsys, name)
		if err != nil {
			return err
		}
		nw.str("symlink")
		nw.str("target")
		nw.str(target)
	default:
		return fmt.Errorf("%s: cannot put a %v in a NAR", name, m.Type())
	}
	nw.str(")")
	return nw.err
}

func (nw *narWriter) contents(name string, size int64) error {
	f, err := nw.fsys.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	nw.u64(uint64(size))
	if nw.err != nil {
		return nw.err
	}
	n, err := io.Copy(nw.w, io.LimitReader(f, size))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if n != size {
		return fmt.Errorf("%s: changed while being read (%d bytes, expected %d)", name, n, size)
	}
	nw.pad(size)
	return nw.err
}
