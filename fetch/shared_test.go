package fetch_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
)

// Two readers need the same intermediate node, which nobody has loaded
// yet. The first reader gives up (its request was interrupted); the second
// must still get its bytes: the shared load may not run under the first
// reader's context.
func TestSharedNodeLoadSurvivesFirstReaderCancel(t *testing.T) {
	st := fetchtest.NewStore()
	data := randomBytes(400<<10, 31)
	// 4 KiB chunks, 8 links per node: three levels below the root.
	root, err := st.AddFile(data, fetchtest.Options{ChunkSize: 4 << 10, RawLeaves: true, MaxLinks: 8})
	if err != nil {
		t.Fatal(err)
	}
	f, err := fetch.OpenFile(context.Background(), st, root)
	if err != nil {
		t.Fatal(err)
	}
	// Hold every dag-pb block below the root until released.
	entered := make(chan struct{}, 64)
	release := make(chan struct{})
	var once sync.Once
	st.SetDelay(func(c cid.Cid) {
		if c.Type() == cid.DagProtobuf && !c.Equals(root) {
			entered <- struct{}{}
			<-release
		}
	})
	defer once.Do(func() { close(release) })

	ctx1, cancel1 := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := f.ReadAt(ctx1, make([]byte, 100), 200<<10)
		first <- err
	}()
	<-entered // the first reader's load of the node is under way
	second := make(chan error, 1)
	buf := make([]byte, 100)
	go func() {
		_, err := f.ReadAt(context.Background(), buf, 200<<10)
		second <- err
	}()
	time.Sleep(100 * time.Millisecond) // let the second reader join the load
	cancel1()
	select {
	case err := <-first:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("first reader: err=%v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("first reader still blocked 5s after its context was cancelled")
	}
	once.Do(func() { close(release) })
	if err := <-second; err != nil {
		t.Fatalf("second reader failed because the first gave up: %v", err)
	}
	if string(buf) != string(data[200<<10:200<<10+100]) {
		t.Fatal("second reader got wrong bytes")
	}
}

// A block that failed is remembered for a moment: the kernel's immediate
// retry of a failed read fails at once instead of waiting the bound again;
// an interrupted fetch is not remembered; the memory ends.
func TestRememberFailures(t *testing.T) {
	st := fetchtest.NewStore()
	root, err := st.AddFile(randomBytes(5000, 3), fetchtest.Options{ChunkSize: 256 << 10, RawLeaves: true})
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	var fail error = fmt.Errorf("no source answered: %w", context.DeadlineExceeded)
	src := fetch.BlockGetterFunc(func(ctx context.Context, c cid.Cid) (blocks.Block, error) {
		calls++
		if fail != nil {
			return nil, fail
		}
		return st.GetBlock(ctx, c)
	})
	m := fetch.RememberFailures(src, 200*time.Millisecond)
	ctx := context.Background()
	if _, err := m.GetBlock(ctx, root); err == nil {
		t.Fatal("no error")
	}
	fail = nil
	if _, err := m.GetBlock(ctx, root); !errors.Is(err, fetch.ErrRecentlyFailed) {
		t.Fatalf("retry: %v, want the remembered failure", err)
	}
	if calls != 1 {
		t.Fatalf("source asked %d times", calls)
	}
	time.Sleep(300 * time.Millisecond)
	if _, err := m.GetBlock(ctx, root); err != nil {
		t.Fatalf("after the memory ended: %v", err)
	}
	other, _ := st.AddFile(randomBytes(100, 4), fetchtest.Options{ChunkSize: 256 << 10, RawLeaves: true})
	for _, quick := range []error{context.Canceled, errors.New("connection reset"), fetch.ErrHashMismatch} {
		fail = quick
		m.GetBlock(ctx, other)
		fail = nil
		if _, err := m.GetBlock(ctx, other); err != nil {
			t.Fatalf("a failure that cost no time (%v) was remembered: %v", quick, err)
		}
	}
}

// Failover spends no more than the caller's deadline, whatever the number
// of hanging sources, and says which it tried.
func TestFailoverWithinDeadline(t *testing.T) {
	hang := fetch.BlockGetterFunc(func(ctx context.Context, c cid.Cid) (blocks.Block, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	f := fetch.Failover{hang, hang, hang}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	st := fetchtest.NewStore()
	c, _ := st.AddFile([]byte("x"), fetchtest.Options{ChunkSize: 256 << 10, RawLeaves: true})
	_, err := f.GetBlock(ctx, c)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("took %v with a 300ms deadline", el)
	}
}
