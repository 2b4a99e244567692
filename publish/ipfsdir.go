package publish

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ipfs/boxo/files"
	"github.com/ipfs/boxo/ipld/merkledag"
	"github.com/ipfs/boxo/ipld/unixfs"
	"github.com/ipfs/boxo/ipns"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/kubo/client/rpc"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/narindex"
)

// DirResult is what AddCacheDir added.
type DirResult struct {
	Root     cid.Cid
	Files    int   // entries of the directory
	NarInfos int   // of which narinfos
	Bytes    int64 // bytes of the files
	Sharded  bool  // kubo wrote a HAMT-sharded directory
}

// IsCacheDirEntry reports whether a file of a binary cache directory goes
// into its IPFS directory: nix-cache-info, <hash>.narinfo and <hash>.ls.
// nar/ is left out, as is anything else (temporary files, Nix's log/ or
// realisations/): each NAR is in IPFS already, under its narinfo's
// IpfsCid, and adding the NAR files again would read every NAR of the
// cache on every publish.
func IsCacheDirEntry(name string) bool {
	if name == "nix-cache-info" {
		return true
	}
	hash, ok := strings.CutSuffix(name, ".narinfo")
	if !ok {
		hash, ok = strings.CutSuffix(name, ".ls")
	}
	if !ok {
		return false
	}
	_, err := narindex.ParseStorePathBase(hash + "-x")
	return err == nil
}

// AddCacheDir adds the binary cache directory dir to IPFS through kubo's
// RPC API as one UnixFS directory of the files IsCacheDirEntry accepts:
// CIDv1, raw leaves, 256 KiB chunks, no mode or mtime, pinned (pin name
// "ipnix cache directory", so that earlier roots can be found with `ipfs
// pin ls --names`). kubo shards it (HAMT) once its links pass
// Import.UnixFSHAMTDirectorySizeThreshold (256 KiB by default: about
// 1,800 store paths); a root block larger than fetch.MaxBlockSize (kubo
// told not to shard) is an error, since no client could fetch it. Files
// are opened one at a time as they are sent; progress, when not nil, is
// called after each is opened.
func AddCacheDir(ctx context.Context, api *rpc.HttpApi, dir string, progress func(sent, total int)) (*DirResult, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("cache directory: %w", err)
	}
	d := &lazyDir{dir: dir, progress: progress}
	for _, e := range ents {
		if IsCacheDirEntry(e.Name()) {
			d.names = append(d.names, e.Name())
		}
	}
	slices.Sort(d.names)
	if !slices.Contains(d.names, "nix-cache-info") {
		return nil, fmt.Errorf("%s has no nix-cache-info: not a binary cache", dir)
	}
	top := files.NewMapDirectory(map[string]files.Node{"": d}) // kubo unwraps it
	resp, err := api.Request("add").
		Option("hash", "sha2-256").
		Option("chunker", DefaultChunker).
		Option("cid-version", 1).
		Option("raw-leaves", true).
		Option("inline", false).
		Option("pin", true).
		Option("pin-name", "ipnix cache directory").
		Option("progress", false).
		Option("quieter", true).
		Body(files.NewMultiFileReader(top, false, false)).
		Send(ctx)
	if err != nil {
		return nil, fmt.Errorf("kubo add of %s: %w", dir, err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("kubo add of %s: %w", dir, resp.Error)
	}
	root, err := parseAddAnswer(resp.Output)
	resp.Close()
	if err != nil {
		return nil, err
	}
	if d.err != nil { // kubo may have taken a cut-short body
		return nil, d.err
	}
	res := &DirResult{Root: root, Files: len(d.names), Bytes: d.bytes}
	for _, n := range d.names {
		if strings.HasSuffix(n, ".narinfo") {
			res.NarInfos++
		}
	}
	if res.Sharded, err = checkDirRoot(ctx, api, root); err != nil {
		return nil, err
	}
	return res, nil
}

// checkDirRoot fetches the root block kubo wrote and reports whether it
// is a HAMT shard; one too large for any client to fetch is an error.
func checkDirRoot(ctx context.Context, api *rpc.HttpApi, root cid.Cid) (bool, error) {
	resp, err := api.Request("block/get", root.String()).Send(ctx)
	if err != nil {
		return false, fmt.Errorf("kubo block/get %s: %w", root, err)
	}
	defer resp.Close()
	if resp.Error != nil {
		return false, fmt.Errorf("kubo block/get %s: %w", root, resp.Error)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Output, fetch.MaxBlockSize+1))
	if err != nil {
		return false, fmt.Errorf("kubo block/get %s: %w", root, err)
	}
	if len(data) > fetch.MaxBlockSize {
		return false, fmt.Errorf("kubo wrote the cache directory %s as one block of more than %d bytes, which no client fetches: let kubo shard large directories (Import.UnixFSHAMTDirectorySizeThreshold, Import.UnixFSHAMTDirectorySizeEstimation not \"disabled\")", root, fetch.MaxBlockSize)
	}
	pn, err := merkledag.DecodeProtobuf(data)
	if err != nil {
		return false, fmt.Errorf("cache directory %s: %w", root, err)
	}
	fsn, err := unixfs.FSNodeFromBytes(pn.Data())
	if err != nil {
		return false, fmt.Errorf("cache directory %s: %w", root, err)
	}
	switch fsn.Type() {
	case unixfs.THAMTShard:
		return true, nil
	case unixfs.TDirectory:
		return false, nil
	}
	return false, fmt.Errorf("kubo added %s as a UnixFS %s, not a directory", root, fsn.Type())
}

// IPNSTTL is the TTL PublishName puts into records: how long resolvers
// that cache (gateways, other kubo nodes) may answer from their cache.
const IPNSTTL = time.Minute

// PublishName points the IPNS name of kubo's key keyName at root
// (name/publish with allow-offline, so that a node without routing keeps
// the record in its datastore and its gateway serves it; TTL IPNSTTL;
// lifetime kubo's default, 48 hours, which kubo's republisher extends).
// The key must exist (`ipfs key gen NAME`): it is not created here, since
// clients are configured with the name, and a typo or a fresh kubo
// repository must not move them silently to a new one. It returns the
// name in its k51... form.
func PublishName(ctx context.Context, api *rpc.HttpApi, keyName string, root cid.Cid) (string, error) {
	want, err := KeyName(ctx, api, keyName)
	if err != nil {
		return "", err
	}
	var out struct{ Name, Value string }
	err = api.Request("name/publish", "/ipfs/"+root.String()).
		Option("key", keyName).
		Option("allow-offline", true).
		Option("ttl", IPNSTTL.String()).
		Exec(ctx, &out)
	if err != nil {
		return "", fmt.Errorf("kubo name/publish %s under key %q: %w", root, keyName, err)
	}
	name, err := ipns.NameFromString(out.Name)
	if err != nil {
		return "", fmt.Errorf("kubo name/publish answered name %q: %w", out.Name, err)
	}
	if !want.Equal(name) {
		return "", fmt.Errorf("kubo published under %s, not key %q's name %s", name, keyName, want)
	}
	return name.String(), nil
}

// KeyName returns the IPNS name of kubo's key keyName, or an error saying
// how to create the key.
func KeyName(ctx context.Context, api *rpc.HttpApi, keyName string) (ipns.Name, error) {
	var keys struct {
		Keys []struct{ Name, Id string }
	}
	if err := api.Request("key/list").Exec(ctx, &keys); err != nil {
		return ipns.Name{}, fmt.Errorf("kubo key/list: %w", err)
	}
	for _, k := range keys.Keys {
		if k.Name == keyName {
			n, err := ipns.NameFromString(k.Id)
			if err != nil {
				return ipns.Name{}, fmt.Errorf("kubo key %q has id %q: %w", keyName, k.Id, err)
			}
			return n, nil
		}
	}
	return ipns.Name{}, fmt.Errorf("kubo has no key %q: create it once with `ipfs key gen %s` and keep that kubo repository (the IPNS name is the key's)", keyName, keyName)
}

// CheckName asks kubo for the record of the IPNS name it just published
// (routing/get, for at most a few seconds) and returns an error when kubo
// answers that it has none: a node whose routing holds no IPNS records
// (Routing.Type "none") publishes names that nobody, itself included, can
// resolve. No answer within the time is not an error (a DHT may be slow).
func CheckName(ctx context.Context, api *rpc.HttpApi, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var ev struct{ Extra string }
	err := api.Request("routing/get", "/ipns/"+name).Exec(ctx, &ev)
	switch {
	case err == nil && ev.Extra != "":
		return nil
	case err != nil && ctx.Err() != nil:
		return nil
	case err == nil:
		err = errors.New("empty record")
	}
	return fmt.Errorf("kubo cannot find the record of %s it just published (%v): clients will not resolve it; IPNS needs routing that holds records (Routing.Type dht, even with no peers, or auto), not \"none\"", name, err)
}

// lazyDir is the directory AddCacheDir sends: its files are opened one
// at a time, as the request body reaches them (thousands of narinfos
// must not hold thousands of descriptors).
type lazyDir struct {
	dir      string
	names    []string
	progress func(sent, total int)
	bytes    int64
	err      error // the first file that could not be sent
}

func (d *lazyDir) Close() error               { return nil }
func (d *lazyDir) Mode() os.FileMode          { return 0 }
func (d *lazyDir) ModTime() time.Time         { return time.Time{} }
func (d *lazyDir) Size() (int64, error)       { return 0, files.ErrNotSupported }
func (d *lazyDir) Entries() files.DirIterator { return &lazyIter{d: d, i: -1} }

type lazyIter struct {
	d    *lazyDir
	i    int
	node files.Node
	err  error
}

func (it *lazyIter) Name() string     { return it.d.names[it.i] }
func (it *lazyIter) Node() files.Node { return it.node }
func (it *lazyIter) Err() error       { return it.err }

func (it *lazyIter) Next() bool {
	it.i++
	if it.i >= len(it.d.names) {
		return false
	}
	path := filepath.Join(it.d.dir, it.d.names[it.i])
	f, err := os.Open(path)
	if err == nil {
		var fi os.FileInfo
		if fi, err = f.Stat(); err == nil && !fi.Mode().IsRegular() {
			err = errors.New("not a regular file")
		} else if err == nil {
			it.d.bytes += fi.Size()
		}
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		it.err = fmt.Errorf("adding %s: %w", path, err)
		it.d.err = it.err
		return false
	}
	it.node = files.NewReaderFile(f) // closed once sent
	if it.d.progress != nil {
		it.d.progress(it.i+1, len(it.d.names))
	}
	return true
}
