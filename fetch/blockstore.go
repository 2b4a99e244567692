package fetch

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ipfs/boxo/datastore/dshelp"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	flatfs "github.com/ipfs/go-ds-flatfs"

	"github.com/ipnix/ipnix/internal/blockfile"
)

// Blockstore reads blocks straight from the files of a kubo repository on
// this machine: its flatfs blockstore (kubo's default), one file a block
// named by the block's multihash. A block kubo holds then costs a file
// read, where asking kubo costs kubo's CPU to read the same file and copy
// it through HTTP (on a 2-core machine, as much as the mount's own work
// for a cold sequential read). A block the repository lacks is
// ErrBlockNotFound, and the next source (kubo's API, which fetches from
// the network) is asked. Like any source it is trusted for nothing: the
// read path checks every block against its CID, and a file that is not a
// regular file of at most MaxBlockSize bytes is refused without being
// read.
type Blockstore struct {
	dir   string // the flatfs directory, <repo>/blocks
	shard flatfs.ShardFunc

	// Timeout bounds one block's file read, as a gateway's request is
	// bounded: zero means DefaultBlockTimeout. Whoever owns the repository
	// can point a shard directory at a file system whose reads never
	// return (a FUSE or NFS mount); the read is then abandoned, so that
	// the next source is asked and the read's own deadline holds.
	Timeout time.Duration

	Read    atomic.Int64 // blocks read from their files
	Missing atomic.Int64 // blocks asked for that had no file
}

// shardingMax bounds the SHARDING file read: it holds one short line.
const shardingMax = 256

// OpenBlockstore opens the flatfs blockstore of the kubo repository repo.
// It fails when repo has none (another datastore, or not a repository).
func OpenBlockstore(repo string) (*Blockstore, error) {
	dir := filepath.Join(repo, "blocks")
	data, _, err := blockfile.Read(filepath.Join(dir, flatfs.SHARDING_FN), shardingMax)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s has no flatfs blockstore (no blocks/%s)", repo, flatfs.SHARDING_FN)
		}
		return nil, err
	}
	shard, err := ParseSharding(string(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, flatfs.SHARDING_FN), err)
	}
	return &Blockstore{dir: dir, shard: shard}, nil
}

// ParseSharding parses the contents of a flatfs SHARDING file, such as
// "/repo/flatfs/shard/v1/next-to-last/2".
func ParseSharding(s string) (flatfs.ShardFunc, error) {
	s = strings.TrimSpace(s)
	// flatfs builds its padding with strings.Repeat of the parameter:
	// check it before a negative one panics or a huge one allocates.
	i := strings.LastIndexByte(s, '/')
	n, err := strconv.Atoi(s[i+1:])
	if i < 0 || err != nil || n < 1 || n > 16 {
		return nil, fmt.Errorf("unsupported flatfs sharding %q", clip(s))
	}
	id, err := flatfs.ParseShardFunc(s)
	if err != nil {
		return nil, fmt.Errorf("unsupported flatfs sharding %q: %w", clip(s), err)
	}
	return id.Func(), nil
}

// path is where the blockstore keeps the block c.
func (b *Blockstore) path(c cid.Cid) string {
	key := dshelp.MultihashToDsKey(c.Hash()).String()[1:] // without the leading "/"
	return filepath.Join(b.dir, b.shard(key), key+".data")
}

// GetBlock reads c's file. Its bytes are not checked here.
func (b *Blockstore) GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	data, err := b.read(ctx, b.path(c))
	if errors.Is(err, fs.ErrNotExist) {
		b.Missing.Add(1)
		return nil, fmt.Errorf("%w: %s is not in %s", ErrBlockNotFound, c, b)
	}
	if err != nil {
		return nil, err
	}
	b.Read.Add(1)
	return blocks.NewBlockWithCid(data, c)
}

// fileReads bounds the blockstore's file reads running at once (see
// blockfile.Limiter): past it the blockstore is passed over at once and
// the next source asked.
var fileReads = blockfile.NewLimiter(blockfile.DefaultPending)

// read reads the block file p within ctx and b.Timeout (see
// blockfile.ReadBounded).
func (b *Blockstore) read(ctx context.Context, p string) ([]byte, error) {
	timeout := b.Timeout
	if timeout <= 0 {
		timeout = DefaultBlockTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	data, _, err := blockfile.ReadBounded(ctx, fileReads, p, MaxBlockSize)
	return data, err
}

func (b *Blockstore) String() string { return "kubo blockstore " + b.dir }
