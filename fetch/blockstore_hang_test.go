package fetch

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/internal/blockfile"
	"github.com/ipnix/ipnix/internal/hangfs"
)

type fixedSource map[cid.Cid][]byte

func (s fixedSource) GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	if b, ok := s[c]; ok {
		return blocks.NewBlockWithCid(b, c)
	}
	return nil, ErrBlockNotFound
}

// A block file whose read never returns (its shard directory a symlink,
// put there by whoever owns the repository, to a file system that hangs)
// must not hold a read beyond its deadline, and the next source must be
// asked once the block's own bound passes.
func TestBlockstoreHangingFileBounded(t *testing.T) {
	mnt := hangfs.Dir(t)
	bs := testBlockstore(t)
	data := []byte("the real block")
	c := rawBlock(t, data)
	if err := os.Symlink(mnt, filepath.Dir(bs.path(c))); err != nil {
		t.Fatal(err)
	}
	bs.Timeout = 300 * time.Millisecond

	type result struct {
		b   blocks.Block
		err error
	}
	get := func(src BlockGetter, ctx context.Context) chan result {
		ch := make(chan result, 1)
		go func() { b, err := src.GetBlock(ctx, c); ch <- result{b, err} }()
		return ch
	}

	// The read's own deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	select {
	case r := <-get(bs, ctx):
		if r.err == nil {
			t.Fatal("a block from a file that never reads")
		}
	case <-time.After(5 * time.Second):
		t.Error("a block file that hangs holds the read past its deadline")
	}

	// The block's own bound: the next source is asked.
	var stats Stats
	fo := Failover{Verify(bs, &stats), Verify(fixedSource{c: data}, &stats)}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	select {
	case r := <-get(fo, ctx2):
		if r.err != nil || string(r.b.RawData()) != string(data) {
			t.Fatalf("failover past a hanging block file: %v", r.err)
		}
	case <-time.After(8 * time.Second):
		t.Error("a block file that hangs keeps the next source from being asked")
	}

	// Reads that never return take at most blockfile.DefaultPending goroutines; past
	// that the blockstore is passed over at once, not after the block's
	// bound each time.
	repo2 := flatfsRepo(t, "/repo/flatfs/shard/v1/prefix/2") // every SHA-256 key starts "CI"
	bs2, err := OpenBlockstore(repo2)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(mnt, filepath.Dir(bs2.path(c))); err != nil {
		t.Fatal(err)
	}
	bs2.Timeout = time.Hour
	ctx3, cancel3 := context.WithCancel(context.Background())
	var chans []chan result
	want := 8 + fileReads.Pending() // the reads above have not returned either
	for i := range blockfile.DefaultPending + 8 {
		ci := rawBlock(t, []byte{byte(i), byte(i >> 8)})
		ch := make(chan result, 1)
		go func() { b, err := bs2.GetBlock(ctx3, ci); ch <- result{b, err} }()
		chans = append(chans, ch)
	}
	fast := 0
	timer := time.After(5 * time.Second)
	for fast < want {
		select {
		case <-timer:
			t.Fatalf("%d reads passed over the blockstore within 5 s, want %d", fast, want)
		default:
		}
		fast = 0
		for _, ch := range chans {
			select {
			case r := <-ch:
				if r.err == nil || !strings.Contains(r.err.Error(), "file reads are running") {
					t.Fatalf("past %d hung reads: %v", blockfile.DefaultPending, r.err)
				}
				fast++
				ch <- r
			default:
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if fast != want {
		t.Fatalf("%d reads of files that never read returned", fast-want)
	}
	cancel3()
}
