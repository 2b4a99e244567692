package publish

import (
	"compress/bzip2"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/ipnix/ipnix/narindex"
)

// Cache republishes every entry of the local binary cache at from (a
// directory or file:// URL) whose nix-cache-info names /nix/store: each
// NAR is decompressed (bzip2 when the narinfo names no Compression, as in
// Nix), checked against the narinfo's NarHash and NarSize, and added to
// IPFS; the listing is built from it. The narinfo keeps its fields and Sig
// lines and gains IpfsCid and IpfsLsHash (and IpfsCidSig with a key). The
// NAR file is copied unless from and the output are one directory.
func (p *Publisher) Cache(ctx context.Context, from string) (Summary, error) {
	var sum Summary
	dir, err := cacheDir(from)
	if err != nil {
		return sum, err
	}
	data, err := os.ReadFile(filepath.Join(dir, "nix-cache-info"))
	if err != nil {
		return sum, fmt.Errorf("%s is not a binary cache: %w", dir, err)
	}
	if _, err := narindex.ParseCacheInfo(data); err != nil {
		return sum, fmt.Errorf("%s/nix-cache-info: %w", dir, err)
	}
	names, err := filepath.Glob(filepath.Join(dir, "*.narinfo"))
	if err != nil {
		return sum, err
	}
	sort.Strings(names)
	same := sameDir(dir, p.opts.To)
	p.opts.Progress.Start(len(names))
	defer p.opts.Progress.Done()
	for _, name := range names {
		data, err := os.ReadFile(name)
		if err != nil {
			return sum, err
		}
		ni, err := narindex.ParseNarInfo(data)
		if err != nil {
			return sum, fmt.Errorf("%s: %w", name, err)
		}
		sp, err := narindex.ParseStorePath(ni.StorePath)
		if err != nil {
			return sum, fmt.Errorf("%s: %w", name, err)
		}
		if filepath.Base(name) != sp.Hash+".narinfo" {
			return sum, fmt.Errorf("%s describes %s, whose narinfo would be %s.narinfo", name, ni.StorePath, sp.Hash)
		}
		p.opts.Progress.Item(sp.Base(), ni.NarSize)
		if p.published(sp.Hash) {
			sum.Skipped++
			p.opts.Progress.Skipped()
			continue
		}
		if err := p.cacheEntry(ctx, dir, same, sp, ni); err != nil {
			return sum, err
		}
		sum.Published++
		sum.Bytes += ni.NarSize
		p.opts.Progress.Finished(ni.NarSize)
	}
	return sum, nil
}

func (p *Publisher) cacheEntry(ctx context.Context, dir string, same bool, sp narindex.StorePath, ni *narindex.NarInfo) error {
	if ni.URL == "" || strings.Contains(ni.URL, "..") || filepath.IsAbs(ni.URL) {
		return fmt.Errorf("%s: URL %q does not name a file inside the cache", sp, ni.URL)
	}
	src := filepath.Join(dir, filepath.FromSlash(ni.URL))
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("%s: %w", sp, err)
	}
	defer f.Close()
	var copyTo io.Writer
	var tmp *os.File
	if !same {
		dst := filepath.Join(p.opts.To, filepath.FromSlash(ni.URL))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		// In nar/ whatever the URL, where the next publish sweeps what a
		// killed one left (tmpfiles.go), and renamed into place.
		narDir := filepath.Join(p.opts.To, "nar")
		if err := os.MkdirAll(narDir, 0o755); err != nil {
			return err
		}
		tmp, err = os.CreateTemp(narDir, ".tmp-*")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name())
		defer tmp.Close()
		copyTo = tmp
	}
	// An uncompressed NAR is copied as one more sink of the ingest, on its
	// own beside the upload and the hash, bypassing the page cache where
	// it can (as a NAR dumped from the store is); a compressed one is
	// copied as it is read, before it is decompressed.
	var raw io.Reader = f
	var extra io.Writer
	switch {
	case copyTo == nil:
	case ni.Compression == "none":
		extra = newNarFile(tmp)
	default:
		raw = io.TeeReader(f, copyTo)
	}
	nar, closeNar, err := decompress(ni.Compression, raw)
	if err != nil {
		return fmt.Errorf("%s: %w", sp, err)
	}
	in, err := ingest(ctx, p.add, nar, extra, p.opts.MaxEntries)
	closeNar()
	if err != nil {
		return fmt.Errorf("%s: %w", sp, err)
	}
	if err := in.check(sp.String(), ni.NarHash, ni.NarSize); err != nil {
		return err
	}
	if tmp != nil {
		// The compressed stream may have trailing bytes the decoder did
		// not need; copy them too.
		if _, err := io.Copy(tmp, f); err != nil {
			return err
		}
		if err := tmp.Sync(); err != nil {
			return err
		}
		// Readable by a web server serving the directory, as the narinfos.
		if err := tmp.Chmod(0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp.Name(), filepath.Join(p.opts.To, filepath.FromSlash(ni.URL))); err != nil {
			return err
		}
	}
	// The listing is the one built from the NAR just checked, never the
	// source's .ls: its digest is about to be signed.
	return p.finish(sp, ni, in)
}

// decompress undoes a narinfo's Compression. As in Nix, a narinfo
// without one means bzip2.
func decompress(method string, r io.Reader) (io.Reader, func(), error) {
	switch method {
	case "none":
		return r, func() {}, nil
	case "xz":
		xr, err := xz.NewReader(r)
		if err != nil {
			return nil, nil, fmt.Errorf("xz: %w", err)
		}
		return xr, func() {}, nil
	case "zstd":
		zr, err := zstd.NewReader(r)
		if err != nil {
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
		return zr, zr.Close, nil
	case "bzip2", "":
		return bzip2.NewReader(r), func() {}, nil
	}
	return nil, nil, fmt.Errorf("unsupported Compression %q (supported: none, xz, zstd, bzip2, the default)", method)
}

func sameDir(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}
