package narindex

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipnix/ipnix/internal/hangfs"
)

// cacheDir makes a file:// binary cache holding the Nix-written fixtures,
// a listing for the top path, and the nix-cache-info Nix wrote.
func cacheDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range nixFixtures(t) {
		if !strings.Contains(name, "-xz") {
			write(name, data)
		}
	}
	write("nix-cache-info", readFixture(t, "nix-cache-info"))
	write(topHash+".ls", []byte(`{"version":1,"root":{"type":"directory","entries":{}}}`))
	return dir
}

func TestFileSubstituter(t *testing.T) {
	ctx := context.Background()
	dir := cacheDir(t)
	s, err := OpenSubstituter("file://"+dir+"?compression=none", SubstituterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s.URL() != "file://"+dir {
		t.Errorf("URL() = %q", s.URL())
	}
	info, err := s.CacheInfo(ctx)
	if err != nil || *info != (CacheInfo{StoreDir: StoreDir, Priority: 50}) {
		t.Errorf("CacheInfo = %+v, %v", info, err)
	}
	n, err := s.NarInfo(ctx, topHash)
	if err != nil || n.StorePath != "/nix/store/"+topBase {
		t.Fatalf("NarInfo = %+v, %v", n, err)
	}
	if ls, err := s.Listing(ctx, topHash); err != nil || !strings.HasPrefix(string(ls), `{"version":1`) {
		t.Errorf("Listing = %q, %v", ls, err)
	}
	if _, err := s.Listing(ctx, "l2ab8sldkfww980gkvsdvmbqsxn9sqkz"); !errors.Is(err, ErrNotFound) {
		t.Errorf("absent listing: %v", err)
	}
	for _, bad := range []string{"../../../etc/passwd", topHash + "/x", "", strings.ToUpper(topHash)} {
		if _, err := s.NarInfo(ctx, bad); err == nil || errors.Is(err, ErrNotFound) {
			t.Errorf("NarInfo(%q) = %v, want an error other than not found", bad, err)
		}
	}

	// A narinfo stored under another path's hash is refused.
	const other = "0awyzx6jgi8ak2fzss8537k198l14iyx"
	if err := os.WriteFile(filepath.Join(dir, other+".narinfo"), readFixture(t, "narinfo/"+topHash+".narinfo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.NarInfo(ctx, other); err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "describes /nix/store/"+topBase) {
		t.Errorf("misplaced narinfo: %v", err)
	}
	// Corrupt narinfo: an error, not "not found".
	if err := os.WriteFile(filepath.Join(dir, other+".narinfo"), []byte("junk\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.NarInfo(ctx, other); err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), other+".narinfo") {
		t.Errorf("corrupt narinfo: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.NarInfo(cancelled, topHash); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

func TestNegativeCache(t *testing.T) {
	ctx := context.Background()
	dir := cacheDir(t)
	s, err := OpenSubstituter("file://"+dir, SubstituterOptions{NegativeTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	neg := s.(*substituter).neg
	now := time.Now()
	var mu sync.Mutex
	neg.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	const h = "0awyzx6jgi8ak2fzss8537k198l14iyx"
	if _, err := s.NarInfo(ctx, h); !errors.Is(err, ErrNotFound) {
		t.Fatalf("absent: %v", err)
	}
	data := strings.Replace(string(readFixture(t, "narinfo/"+topHash+".narinfo")), topBase, h+"-narindex-top", 1)
	if err := os.WriteFile(filepath.Join(dir, h+".narinfo"), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.NarInfo(ctx, h); !errors.Is(err, ErrNotFound) {
		t.Errorf("within the TTL: %v, want the remembered not found", err)
	}
	mu.Lock()
	now = now.Add(time.Minute)
	mu.Unlock()
	if _, err := s.NarInfo(ctx, h); err != nil {
		t.Errorf("after the TTL: %v", err)
	}

	// The cache stays bounded.
	c := newNegCache(time.Minute, 100)
	for i := 0; i < 1000; i++ {
		c.add(strings.Repeat("x", i))
	}
	if len(c.m) > 100 || !c.has(strings.Repeat("x", 999)) {
		t.Errorf("negative cache holds %d entries", len(c.m))
	}
}

func TestOpenSubstituterRejects(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"s3://bucket", `unsupported scheme "s3"`},
		{"ipfs://bafy", `unsupported scheme "ipfs"`},
		{"/nix/cache", `unsupported scheme ""`},
		{"file://relative/dir", "absolute directory"},
		{"http:///path", "no host"},
		{"http://[::1", "missing ']'"},
	} {
		if _, err := OpenSubstituter(tc.in, SubstituterOptions{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("OpenSubstituter(%q) = %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestCacheInfoParse(t *testing.T) {
	info, err := ParseCacheInfo([]byte("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\nOther: x\n"))
	if err != nil || *info != (CacheInfo{StoreDir: StoreDir, WantMassQuery: true, Priority: 40}) {
		t.Errorf("parse = %+v, %v", info, err)
	}
	if _, err := ParseCacheInfo([]byte("StoreDir: /gnu/store\n")); err == nil || !strings.Contains(err.Error(), "/gnu/store") {
		t.Errorf("other store: %v", err)
	}
	if _, err := ParseCacheInfo([]byte("Priority: high\n")); err == nil {
		t.Error("bad priority accepted")
	}
	for _, dir := range []string{"/nix/store2", "/nix/store/", "/nix", "/nix/store/x", "", "/nix/./store"} {
		if _, err := ParseCacheInfo([]byte("StoreDir: " + dir + "\n")); err == nil {
			t.Errorf("StoreDir %q accepted", dir)
		}
	}
	if _, err := ParseCacheInfo([]byte("StoreDir:  /nix/store \r\n")); err != nil {
		t.Errorf("StoreDir with surrounding white space (which Nix trims): %v", err)
	}
}

func FuzzParseCacheInfo(f *testing.F) {
	f.Add([]byte("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"))
	f.Add([]byte("StoreDir: /nix/store2\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := ParseCacheInfo(data)
		if err == nil && info.StoreDir != StoreDir {
			t.Fatalf("StoreDir %q", info.StoreDir)
		}
		if err == nil && bytes.Contains(data, []byte("StoreDir:")) {
			for _, l := range strings.Split(string(data), "\n") {
				if v, ok := strings.CutPrefix(l, "StoreDir:"); ok && strings.TrimSpace(v) != StoreDir {
					t.Fatalf("accepted StoreDir %q", v)
				}
			}
		}
	})
}

// httpCache serves a cache directory and counts requests per path, with
// some paths answering a fixed status or slowly.
type httpCache struct {
	dir    string
	mu     sync.Mutex
	hits   map[string]int
	status map[string]int
	slow   map[string]bool
}

func (c *httpCache) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.hits[r.URL.Path]++
	st, slow := c.status[r.URL.Path], c.slow[r.URL.Path]
	c.mu.Unlock()
	if slow {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
		return
	}
	if st != 0 {
		http.Error(w, http.StatusText(st), st)
		return
	}
	name, ok := strings.CutPrefix(r.URL.Path, "/prefix/")
	if !ok {
		http.NotFound(w, r)
		return
	}
	http.ServeFile(w, r, filepath.Join(c.dir, name))
}

func (c *httpCache) count(p string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits[p]
}

func newHTTPCache(t *testing.T) (*httpCache, *httptest.Server) {
	c := &httpCache{dir: cacheDir(t), hits: map[string]int{}, status: map[string]int{}, slow: map[string]bool{}}
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	return c, srv
}

func TestHTTPSubstituter(t *testing.T) {
	ctx := context.Background()
	c, srv := newHTTPCache(t)
	s, err := OpenSubstituter(srv.URL+"/prefix/?priority=10", SubstituterOptions{Timeout: 200 * time.Millisecond, Client: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	if s.URL() != srv.URL+"/prefix" {
		t.Errorf("URL() = %q", s.URL())
	}
	if info, err := s.CacheInfo(ctx); err != nil || info.StoreDir != StoreDir {
		t.Errorf("CacheInfo = %+v, %v", info, err)
	}
	if n, err := s.NarInfo(ctx, topHash); err != nil || n.StorePath != "/nix/store/"+topBase {
		t.Errorf("NarInfo = %v, %v", n, err)
	}
	if ls, err := s.Listing(ctx, topHash); err != nil || len(ls) == 0 {
		t.Errorf("Listing = %q, %v", ls, err)
	}

	const (
		h404 = "0awyzx6jgi8ak2fzss8537k198l14iyx"
		h403 = "1awyzx6jgi8ak2fzss8537k198l14iyx"
		h500 = "2awyzx6jgi8ak2fzss8537k198l14iyx"
		hSlo = "3awyzx6jgi8ak2fzss8537k198l14iyx"
		hBig = "4awyzx6jgi8ak2fzss8537k198l14iyx"
	)
	c.status["/prefix/"+h403+".narinfo"] = http.StatusForbidden
	c.status["/prefix/"+h500+".narinfo"] = http.StatusInternalServerError
	c.slow["/prefix/"+hSlo+".narinfo"] = true
	if err := os.WriteFile(filepath.Join(c.dir, hBig+".narinfo"), make([]byte, MaxNarInfoSize+1), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		hash     string
		notFound bool
		want     string
		cached   bool // a second request is answered without asking the server
	}{
		{hash: h404, notFound: true, want: "404", cached: true},
		{hash: h403, notFound: true, want: "403", cached: true},
		{hash: h500, want: "unexpected HTTP status 500"},
		{hash: hSlo, want: "deadline exceeded"},
		{hash: hBig, want: "larger than the limit"},
	} {
		path := "/prefix/" + tc.hash + ".narinfo"
		for round := 1; round <= 2; round++ {
			start := time.Now()
			_, err := s.NarInfo(ctx, tc.hash)
			want := tc.want
			if tc.cached && round == 2 {
				want = "not found (remembered)"
			}
			if errors.Is(err, ErrNotFound) != tc.notFound || err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), tc.hash) {
				t.Errorf("%s round %d: %v; want not found %v, %q", tc.hash, round, err, tc.notFound, want)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("%s: took %v with a 200ms timeout", tc.hash, d)
			}
		}
		want := 2
		if tc.cached {
			want = 1
		}
		if got := c.count(path); got != want {
			t.Errorf("%s: server saw %d requests, want %d", tc.hash, got, want)
		}
	}
}

// A file:// cache whose narinfo is a FIFO, or a symlink to some other
// file (a signing key), neither hangs the reader nor shows that file's
// content in the error.
func TestFileSubstituterHostileEntries(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nix-cache-info"), []byte("StoreDir: /nix/store\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := "0000000000000000000000000000000a"
	if err := syscall.Mkfifo(filepath.Join(dir, fifo+".narinfo"), 0o644); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(t.TempDir(), "key.sec")
	if err := os.WriteFile(secret, []byte("cache.example.org-1:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := "0000000000000000000000000000000b"
	if err := os.Symlink(secret, filepath.Join(dir, link+".narinfo")); err != nil {
		t.Fatal(err)
	}
	s, err := OpenSubstituter("file://"+dir, SubstituterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := s.NarInfo(context.Background(), fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("narinfo that is a FIFO: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reading a narinfo that is a FIFO hangs")
	}
	_, err = s.NarInfo(context.Background(), link)
	if err == nil || strings.Contains(err.Error(), "cache.example.org") || strings.Contains(err.Error(), "c2Vj") {
		t.Fatalf("narinfo that is a symlink to a key file: %v", err)
	}
}

// A binary cache directory on a disk that stopped answering holds no
// lookup past its bound: the narinfo's read is left behind and the lookup
// fails with its deadline.
func TestFileSubstituterHangingReadBounded(t *testing.T) {
	hang := hangfs.Dir(t)
	dir := t.TempDir()
	const hash = "l2ab8sldkfww980gkvsdvmbqsxn9sqkz"
	if err := os.Symlink(filepath.Join(hang, "x"), filepath.Join(dir, hash+".narinfo")); err != nil {
		t.Fatal(err)
	}
	s, err := OpenSubstituter("file://"+dir, SubstituterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { _, err := s.NarInfo(ctx, hash); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want the lookup's deadline", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a narinfo that never reads holds the lookup past its deadline")
	}
}
