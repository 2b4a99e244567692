package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for a command writing while a test
// reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ipnsName is an IPNS key name no one publishes.
const ipnsName = "k51qzi5uqu5djmw2yvf8kk5cdjc1ddc00o4d5sjwi6f79xzcay9j3gkddw5uu4"

// TestThinServeAndPrefetchNoKubo: serve and prefetch with only --gateway,
// an ipns:// substituter (whose name must be resolved) and $IPFS_PATH/api
// naming a trap: the gateway is asked for the IPNS record and for blocks,
// and no connection is ever made to a kubo API.
func TestThinServeAndPrefetchNoKubo(t *testing.T) {
	port, conns := countConns(t)
	ipfsPath := t.TempDir()
	os.WriteFile(filepath.Join(ipfsPath, "api"), []byte("/ip4/127.0.0.1/tcp/"+strconv.Itoa(port)), 0o600)
	t.Setenv("IPFS_PATH", ipfsPath)

	var ipnsAsked, asked atomic.Int64
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		if strings.HasPrefix(r.URL.Path, "/ipns/") {
			ipnsAsked.Add(1)
		}
		http.NotFound(w, r)
	}))
	defer gw.Close()
	const root = "0a7kpxgpaq2ykzwk3c1j5f9b5ivr9pg2-x"

	t.Run("prefetch", func(t *testing.T) {
		var out, errb syncBuffer
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		err := runPrefetch(ctx, []string{"--cache-dir", t.TempDir(), "--gateway", gw.URL, "--substituter", "ipns://" + ipnsName,
			"--trusted-public-key", testKey, "--block-timeout", "2s", root}, &out, &errb)
		if err == nil {
			t.Fatal("prefetch of an unresolvable name succeeded")
		}
		if ipnsAsked.Load() == 0 {
			t.Errorf("the gateway was never asked for the IPNS record: %v\n%s", err, errb.String())
		}
	})
	t.Run("serve", func(t *testing.T) {
		var out, errb syncBuffer
		before := ipnsAsked.Load()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- runServe(ctx, []string{"--listen", "127.0.0.1:0", "--gateway", gw.URL, "--substituter", "ipns://" + ipnsName,
				"--trusted-public-key", testKey, "--block-timeout", "2s", "--ipns-refresh", "1s"}, &out, &errb)
		}()
		defer func() { cancel(); <-done }()
		re := regexp.MustCompile(`serving (http://[0-9.:]+)`)
		var base string
		for deadline := time.Now().Add(30 * time.Second); base == ""; time.Sleep(20 * time.Millisecond) {
			if m := re.FindStringSubmatch(errb.String()); m != nil {
				base = m[1]
			} else if time.Now().After(deadline) {
				t.Fatalf("serve did not start:\n%s", errb.String())
			}
		}
		for _, p := range []string{"/nix-cache-info", "/" + root[:32] + ".narinfo", "/nar/" + root[:32] + ".nar"} {
			resp, err := http.Get(base + p)
			if err == nil {
				resp.Body.Close()
				if p != "/nix-cache-info" && resp.StatusCode == http.StatusOK {
					t.Errorf("%s: served", p)
				}
			}
		}
		if ipnsAsked.Load() == before {
			t.Errorf("the gateway was never asked for the IPNS record by serve\n%s", errb.String())
		}
	})
	if n := conns.Load(); n != 0 {
		t.Errorf("%d connections to the kubo API of $IPFS_PATH with only --gateway given", n)
	}
}
