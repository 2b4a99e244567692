package narindex

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// TestNewSubstituter: a substituter over a fetch function checks what
// OpenSubstituter's do, holds the function to its limits, and remembers no
// miss, so a file that appears is found at once.
func TestNewSubstituter(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	files := map[string][]byte{}
	calls := map[string]int{}
	s := NewSubstituter("test://cache", func(ctx context.Context, name string, limit int64) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		calls[name]++
		data, ok := files[name]
		if !ok {
			return nil, fmt.Errorf("%s: %w", name, ErrNotFound)
		}
		return data, nil
	})
	if s.URL() != "test://cache" {
		t.Errorf("URL() = %q", s.URL())
	}
	if _, err := s.NarInfo(ctx, topHash); !errors.Is(err, ErrNotFound) {
		t.Fatalf("absent narinfo: %v", err)
	}
	mu.Lock()
	files[topHash+".narinfo"] = readFixture(t, "narinfo/"+topHash+".narinfo")
	mu.Unlock()
	n, err := s.NarInfo(ctx, topHash)
	if err != nil || n.StorePath != "/nix/store/"+topBase {
		t.Fatalf("narinfo published after a miss: %+v, %v", n, err)
	}
	if calls[topHash+".narinfo"] != 2 {
		t.Errorf("fetched %d times, want 2 (no memory of the miss)", calls[topHash+".narinfo"])
	}

	// Not a hash part: refused before any fetch.
	if _, err := s.NarInfo(ctx, "../../etc/passwd"); err == nil || len(calls) != 1 {
		t.Errorf("bad hash part: %v, calls %v", err, calls)
	}
	// A narinfo under another path's name is a rejection.
	mu.Lock()
	files["l2ab8sldkfww980gkvsdvmbqsxn9sqkz.narinfo"] = files[topHash+".narinfo"]
	mu.Unlock()
	if _, err := s.NarInfo(ctx, "l2ab8sldkfww980gkvsdvmbqsxn9sqkz"); !errors.Is(err, ErrRejected) {
		t.Errorf("narinfo of another path: %v", err)
	}
	// A function that returns more than the limit is cut off: a narinfo
	// becomes malformed, a listing too large.
	mu.Lock()
	big := []byte(strings.Repeat("x", MaxNarInfoSize+1))
	files[depHash()+".narinfo"] = big
	files[topHash+".ls"] = []byte(strings.Repeat(" ", MaxListingSize+1))
	mu.Unlock()
	if _, err := s.NarInfo(ctx, depHash()); !errors.Is(err, ErrMalformedNarInfo) {
		t.Errorf("oversized narinfo: %v", err)
	}
	if _, err := s.Listing(ctx, topHash); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized listing: %v", err)
	}
	// nix-cache-info is read once.
	mu.Lock()
	files["nix-cache-info"] = []byte("StoreDir: /nix/store\nPriority: 30\n")
	mu.Unlock()
	for range 2 {
		if info, err := s.CacheInfo(ctx); err != nil || info.Priority != 30 {
			t.Fatalf("CacheInfo = %+v, %v", info, err)
		}
	}
	if calls["nix-cache-info"] != 1 {
		t.Errorf("nix-cache-info fetched %d times", calls["nix-cache-info"])
	}
}

func depHash() string { return depBase[:32] }
