package mirror

// Attacks by whoever can write to the binary cache a mirror reads, or
// answers for the kubo node it pins on.

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/kubo/client/rpc"

	"github.com/ipnix/ipnix/narindex"
)

// TestAttackMirrorCacheFiles: narinfos moved under another path's name,
// carrying another path's IpfsCidSig, repeating IpfsCid, oversized, under
// names that are no hash part, or symlinked from outside the directory:
// none of their CIDs is pinned, each is counted, and the run ends.
func TestAttackMirrorCacheFiles(t *testing.T) {
	tc := newTestCache(t)
	f, k := newFakeKubo(t)
	good := testCid("good").String()
	tc.add("good", good, "both")
	read := func(h string) []byte {
		data, err := os.ReadFile(filepath.Join(tc.dir, h+".narinfo"))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(tc.dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var evil []string

	// B's narinfo, validly signed, under A's name.
	bCid := testCid("moved").String()
	b := tc.add("moved-b", bCid, "both")
	aName := hashPart("moved-a")
	write(aName+".narinfo", read(b))
	os.Remove(filepath.Join(tc.dir, b+".narinfo"))
	evil = append(evil, bCid)

	// A's narinfo with B's IpfsCidSig (B signed for the same CID).
	shared := testCid("shared").String()
	sb := tc.add("sig-b", shared, "both")
	sa := tc.add("sig-a", shared, "sig")
	var bSig string
	for _, l := range strings.Split(string(read(sb)), "\n") {
		if strings.HasPrefix(l, "IpfsCidSig: ") {
			bSig = l
		}
	}
	write(sa+".narinfo", append(read(sa), bSig+"\n"...))
	os.Remove(filepath.Join(tc.dir, sb+".narinfo"))
	evil = append(evil, shared)

	// A second IpfsCid line after the signed one.
	dup := tc.add("dup", testCid("dup signed").String(), "both")
	other := testCid("dup unsigned").String()
	write(dup+".narinfo", append(read(dup), "IpfsCid: "+other+"\n"...))
	evil = append(evil, other, testCid("dup signed").String())

	// A narinfo of 10 MB (a valid one padded with an unknown field).
	huge := tc.add("huge", testCid("huge").String(), "both")
	write(huge+".narinfo", append(read(huge), "X: "+strings.Repeat("x", 10<<20)+"\n"...))
	evil = append(evil, testCid("huge").String())

	// Names that are no hash part.
	write("not-a-hash.narinfo", read(tc.add("named", testCid("named").String(), "both")))
	write(".narinfo", []byte("StorePath: x\n"))
	os.Remove(filepath.Join(tc.dir, hashPart("named")+".narinfo"))
	evil = append(evil, testCid("named").String())

	// A symlink to a validly signed narinfo outside the directory is read
	// like any file: it is signed, so pinning it is right. A symlink to a
	// file that is no narinfo is refused.
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret"), []byte("root:x:0:0:secret\n"), 0o644)
	os.Symlink(filepath.Join(outside, "secret"), filepath.Join(tc.dir, hashPart("secret")+".narinfo"))
	os.Symlink("/dev/zero", filepath.Join(tc.dir, hashPart("zero")+".narinfo"))

	// A symlink inside the directory is followed.
	inside := testCid("inside").String()
	in := tc.add("inside", inside, "both")
	os.Mkdir(filepath.Join(tc.dir, "sub"), 0o755)
	os.Rename(filepath.Join(tc.dir, in+".narinfo"), filepath.Join(tc.dir, "sub", in+".narinfo"))
	os.Symlink(filepath.Join("sub", in+".narinfo"), filepath.Join(tc.dir, in+".narinfo"))

	s, log := runMirror(t, tc, tc.entries(), k, Options{TrustedKeys: []narindex.PublicKey{tc.pub}})
	if s.Pinned != 2 || f.calls(good) != 1 || f.calls(inside) != 1 {
		t.Errorf("pinned %d, good pinned %d times, inside %d; want those two once\n%+v\n%s", s.Pinned, f.calls(good), f.calls(inside), s, log)
	}
	for _, c := range evil {
		if f.calls(c) != 0 {
			t.Errorf("pinned %s\n%s", c, log)
		}
	}
	if got := s.Rejected + s.Failed; got != 8 {
		t.Errorf("%d rejected or failed, want 8: %+v\n%s", got, s, log)
	}
	if strings.Contains(log, "secret") {
		t.Errorf("the log shows the content of a file outside the cache:\n%s", log)
	}
}

// TestAttackMirrorFifo: a FIFO (or a symlink to one) named like a narinfo
// in the cache directory must not block the run for ever.
func TestAttackMirrorFifo(t *testing.T) {
	tc := newTestCache(t)
	_, k := newFakeKubo(t)
	tc.add("good", testCid("good").String(), "both")
	if err := syscall.Mkfifo(filepath.Join(tc.dir, hashPart("fifo")+".narinfo"), 0o644); err != nil {
		t.Skip("mkfifo:", err)
	}
	done := make(chan Summary, 1)
	go func() {
		s, _ := runMirror(t, tc, tc.entries(), k, Options{TrustedKeys: []narindex.PublicKey{tc.pub}})
		done <- s
	}()
	select {
	case s := <-done:
		if s.Pinned != 1 || s.Failed != 1 {
			t.Errorf("%+v, want 1 pinned and the FIFO failed", s)
		}
	case <-time.After(30 * time.Second):
		// Unblock the open so that the goroutine ends.
		if f, err := os.OpenFile(filepath.Join(tc.dir, hashPart("fifo")+".narinfo"), os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		<-done
		t.Fatal("a FIFO in the cache directory blocked the mirror (open waits for a writer)")
	}
}

// TestAttackMirrorPinListGarbage: a node answering pin/ls with garbage, an
// endless object, or CIDs of pins it does not have: the run stops with an
// error naming pin/ls (garbage), reads a bounded amount (endless), or at
// worst skips what it was told is pinned (a node's own word about its
// pins is what a mirror goes by).
func TestAttackMirrorPinListGarbage(t *testing.T) {
	tc := newTestCache(t)
	tc.add("good", testCid("good").String(), "both")
	for _, tcase := range []struct {
		what string
		body func(w http.ResponseWriter)
	}{
		{"not JSON", func(w http.ResponseWriter) { w.Write([]byte("<html>nope</html>")) }},
		{"not a CID", func(w http.ResponseWriter) { w.Write([]byte(`{"Cid":"Qm../../etc","Type":"recursive"}`)) }},
		{"endless string", func(w http.ResponseWriter) {
			w.Write([]byte(`{"Cid":"`))
			chunk := bytes.Repeat([]byte("b"), 64<<10)
			for range (64 << 20) / len(chunk) {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}},
	} {
		t.Run(tcase.what, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				tcase.body(w)
			}))
			defer srv.Close()
			api, err := rpc.NewURLApiWithClient(srv.URL, srv.Client())
			if err != nil {
				t.Fatal(err)
			}
			_, err = Run(context.Background(), tc.open(), func(yield func(Entry) bool) {
				for _, e := range tc.entries() {
					if !yield(e) {
						return
					}
				}
			}, &Kubo{API: api}, Options{TrustedKeys: []narindex.PublicKey{tc.pub}})
			if err == nil || !strings.Contains(err.Error(), "pin") {
				t.Errorf("Run = %v, want an error about the node's pins", err)
			}
		})
	}
}
