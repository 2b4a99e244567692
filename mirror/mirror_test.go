package mirror

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/ipfs/kubo/client/rpc"

	"github.com/ipnix/ipnix/narindex"
)

// fakeKubo answers pin/ls and pin/add as kubo does. Pins of CIDs in fail
// answer with that error; stall pins hang, reporting no progress, until
// cancelled; slow pins report progress for a while before succeeding.
type fakeKubo struct {
	t *testing.T

	mu       sync.Mutex
	pins     map[string]bool // CID string (as kubo answers) -> recursive
	lsCalls  int
	addCalls map[string]int
	fail     map[string]string // CID -> "status" | "trailer" | "wrong" | "noconfirm"
	stall    map[string]bool
	slow     map[string]int // CID -> progress messages before success
	inflight int
	maxIn    int
	config   map[string]string // raw JSON values of config keys set
}

func newFakeKubo(t *testing.T) (*fakeKubo, *Kubo) {
	f := &fakeKubo{t: t, pins: map[string]bool{}, addCalls: map[string]int{}, fail: map[string]string{}, stall: map[string]bool{}, slow: map[string]int{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	api, err := rpc.NewURLApiWithClient(srv.URL, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	return f, &Kubo{API: api}
}

func (f *fakeKubo) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	switch r.URL.Path {
	case "/api/v0/pin/ls":
		if q.Get("type") != "recursive" || q.Get("stream") != "true" {
			f.t.Errorf("pin/ls options %v", q)
		}
		f.mu.Lock()
		f.lsCalls++
		var out bytes.Buffer
		for c, rec := range f.pins {
			typ := "direct"
			if rec {
				typ = "recursive"
			}
			fmt.Fprintf(&out, `{"Cid":"%s","Type":"%s"}`+"\n", c, typ)
		}
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write(out.Bytes())
	case "/api/v0/pin/add":
		f.pinAdd(w, r)
	case "/api/v0/config":
		w.Header().Set("Content-Type", "application/json")
		k := q.Get("arg")
		f.mu.Lock()
		v, ok := f.config[k]
		f.mu.Unlock()
		if !ok {
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintf(w, `{"Message":"failed to get config value: \"%s not found\"","Code":0,"Type":"error"}`, k)
			return
		}
		fmt.Fprintf(w, `{"Key":"%s","Value":%s}`, k, v)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeKubo) pinAdd(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	c := q.Get("arg")
	if q.Get("recursive") != "true" || q.Get("progress") != "true" {
		f.t.Errorf("pin/add options %v", q)
	}
	f.mu.Lock()
	f.addCalls[c]++
	f.inflight++
	f.maxIn = max(f.maxIn, f.inflight)
	mode, stall, slow := f.fail[c], f.stall[c], f.slow[c]
	f.mu.Unlock()
	defer func() { f.mu.Lock(); f.inflight--; f.mu.Unlock() }()
	fl := w.(http.Flusher)
	switch {
	case mode == "status":
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprint(w, `{"Message":"merkledag: not found","Code":0,"Type":"error"}`)
		return
	case mode == "trailer":
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Trailer", "X-Stream-Error")
		fmt.Fprint(w, `{"Progress":3,"Bytes":1000}`+"\n")
		w.Header().Set("X-Stream-Error", "blockstore: disk full")
		return
	case stall:
		w.Header().Set("Content-Type", "application/json")
		for {
			// As kubo: the same progress twice a second (here faster).
			fmt.Fprint(w, `{"Progress":1,"Bytes":10}`+"\n")
			fl.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	w.Header().Set("Content-Type", "application/json")
	for i := 1; i <= slow; i++ {
		fmt.Fprintf(w, `{"Progress":%d,"Bytes":%d}`+"\n", i, i*1000)
		fl.Flush()
		time.Sleep(5 * time.Millisecond)
	}
	switch mode {
	case "wrong":
		fmt.Fprintf(w, `{"Pins":["%s"]}`+"\n", testCid("something else"))
		return
	case "noconfirm":
		return
	}
	f.mu.Lock()
	f.pins[c] = true
	f.mu.Unlock()
	fmt.Fprintf(w, `{"Progress":7,"Bytes":262144}`+"\n"+`{"Pins":["%s"]}`+"\n", c)
}

// calls is how often c was asked to be pinned.
func (f *fakeKubo) calls(c string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.addCalls[c]
}

func (f *fakeKubo) stats() (lsCalls, maxInflight int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lsCalls, f.maxIn
}

func testCid(s string) cid.Cid {
	c, err := cid.Prefix{Version: 1, Codec: cid.DagProtobuf, MhType: 0x12 /* sha2-256 */, MhLength: -1}.Sum([]byte(s))
	if err != nil {
		panic(err)
	}
	return c
}

// testCache is a binary cache directory of narinfos.
type testCache struct {
	t   *testing.T
	dir string
	key narindex.SecretKey
	pub narindex.PublicKey
}

func newTestCache(t *testing.T) *testCache {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nix-cache-info"), []byte("StoreDir: /nix/store\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, priv, _ := ed25519.GenerateKey(nil)
	key, err := narindex.ParseSecretKey("mirror-test-1:" + base64.StdEncoding.EncodeToString(priv))
	if err != nil {
		t.Fatal(err)
	}
	return &testCache{t: t, dir: dir, key: key, pub: key.Public()}
}

// hash makes a valid hash part from a name.
func hashPart(name string) string {
	sum := sha256.Sum256([]byte(name))
	return narindex.EncodeNix32(sum[:20])
}

// add writes a narinfo for a store path named name with CID c ("" for
// none); sign: "both", "sig" (Nix signature only), "none", "badcid" (an
// IpfsCidSig over another CID), or "other" (both, by an untrusted key).
func (tc *testCache) add(name, c, sign string) string {
	tc.t.Helper()
	h := hashPart(name)
	sum := sha256.Sum256([]byte("nar of " + name))
	ni := &narindex.NarInfo{
		StorePath: narindex.StoreDir + "/" + h + "-" + name,
		URL:       "nar/" + h + ".nar", Compression: "none",
		NarHash: narindex.Hash{Algo: "sha256", Digest: sum[:]}, NarSize: 1000,
		IpfsCid: c,
	}
	key := tc.key
	if sign == "other" {
		_, priv, _ := ed25519.GenerateKey(nil)
		key, _ = narindex.ParseSecretKey("mirror-test-1:" + base64.StdEncoding.EncodeToString(priv))
	}
	if sign != "none" {
		if err := ni.Sign(key); err != nil {
			tc.t.Fatal(err)
		}
	}
	if (sign == "both" || sign == "other") && c != "" {
		if err := ni.SignCid(key); err != nil {
			tc.t.Fatal(err)
		}
	}
	if sign == "badcid" {
		ni.IpfsCid = testCid("signed").String()
		ni.SignCid(key)
		ni.IpfsCid = c
	}
	if err := os.WriteFile(filepath.Join(tc.dir, h+".narinfo"), ni.Marshal(), 0o644); err != nil {
		tc.t.Fatal(err)
	}
	return h
}

func (tc *testCache) open() narindex.Substituter {
	s, err := narindex.OpenSubstituter("file://"+tc.dir, narindex.SubstituterOptions{})
	if err != nil {
		tc.t.Fatal(err)
	}
	return s
}

func (tc *testCache) entries() []Entry {
	es, err := DirEntries(tc.dir)
	if err != nil {
		tc.t.Fatal(err)
	}
	return es
}

func runMirror(t *testing.T, tc *testCache, es []Entry, k *Kubo, o Options) (Summary, string) {
	t.Helper()
	var log bytes.Buffer
	o.Log = slog.New(slog.NewTextHandler(&log, nil))
	s, err := Run(context.Background(), tc.open(), slices.Values(es), k, o)
	if err != nil {
		t.Fatal(err)
	}
	return s, log.String()
}

func TestMirrorPinsAndResumes(t *testing.T) {
	tc := newTestCache(t)
	f, k := newFakeKubo(t)
	var cids []string
	for i := range 10 {
		c := testCid(fmt.Sprint(i)).String()
		cids = append(cids, c)
		tc.add(fmt.Sprintf("pkg-%d", i), c, "both")
	}
	// Pinned before the run: skipped without a pin/add.
	f.pins[cids[0]] = true
	// A direct pin is not a recursive one: pinned again.
	f.pins[cids[1]] = false
	var progress bytes.Buffer
	s, log := runMirror(t, tc, tc.entries(), k, Options{TrustedKeys: []narindex.PublicKey{tc.pub}, Jobs: 3, Progress: &syncWriter{w: &progress}, ProgressEvery: time.Millisecond})
	if s.Pinned != 9 || s.AlreadyPinned != 1 || s.Failed != 0 || s.Rejected != 0 || s.NarBytes != 9000 {
		t.Fatalf("first run: %+v\n%s", s, log)
	}
	if s.Walked != 9*262144 {
		t.Errorf("walked %d bytes, want %d", s.Walked, 9*262144)
	}
	ls, maxIn := f.stats()
	if f.calls(cids[0]) != 0 || ls != 1 {
		t.Errorf("pin/add of an already pinned CID: %d; pin/ls calls %d", f.calls(cids[0]), ls)
	}
	if maxIn > 3 {
		t.Errorf("%d pins at once with --jobs 3", maxIn)
	}
	if !strings.Contains(progress.String(), "pinned") {
		t.Errorf("no progress line: %q", progress.String())
	}
	if !strings.Contains(s.String(), "pinned 9 (8.8 KiB of NAR), 1 already pinned, 0 rejected, 0 without IpfsCid, 0 failed") {
		t.Errorf("summary %q", s)
	}
	// A second run pins nothing.
	s, _ = runMirror(t, tc, tc.entries(), k, Options{TrustedKeys: []narindex.PublicKey{tc.pub}})
	if s.Pinned != 0 || s.AlreadyPinned != 10 {
		t.Fatalf("second run: %+v", s)
	}
	for _, c := range cids {
		if f.calls(c) > 1 {
			t.Errorf("%s pinned %d times", c, f.calls(c))
		}
	}
}

// A cache an attacker can write to: nothing that is not signed, CID
// included, by a trusted key is pinned; each is counted and named.
func TestMirrorRejectsUntrusted(t *testing.T) {
	tc := newTestCache(t)
	f, k := newFakeKubo(t)
	good := testCid("good").String()
	tc.add("good", good, "both")
	evil := map[string]string{}
	for _, sign := range []string{"sig", "none", "badcid", "other"} {
		c := testCid("evil " + sign).String()
		evil[tc.add("evil-"+sign, c, sign)] = c
	}
	// A narinfo without a CID is counted apart.
	tc.add("nocid", "", "both")
	s, log := runMirror(t, tc, tc.entries(), k, Options{TrustedKeys: []narindex.PublicKey{tc.pub}})
	if s.Pinned != 1 || s.Rejected != 4 || s.NoCid != 1 || s.Failed != 0 {
		t.Fatalf("%+v\n%s", s, log)
	}
	for h, c := range evil {
		if f.calls(c) != 0 {
			t.Errorf("pinned %s of untrusted narinfo %s", c, h)
		}
		if !strings.Contains(log, h) {
			t.Errorf("rejection of %s not named in the log:\n%s", h, log)
		}
	}
	if !strings.Contains(log, "Sig does not cover IpfsCid") {
		t.Errorf("log does not say why a Sig-only narinfo is refused:\n%s", log)
	}
	// Without keys (--no-require-sigs), everything with a CID is pinned.
	s, _ = runMirror(t, tc, tc.entries(), k, Options{})
	if s.Pinned != 4 || s.AlreadyPinned != 1 || s.Rejected != 0 {
		t.Fatalf("without keys: %+v", s)
	}
}

// One failing pin does not stop the others; each failure names its path
// and CID.
func TestMirrorFailuresCounted(t *testing.T) {
	tc := newTestCache(t)
	f, k := newFakeKubo(t)
	modes := []string{"status", "trailer", "wrong", "noconfirm"}
	want := map[string]string{"status": "merkledag: not found", "trailer": "disk full", "wrong": "answered that it pinned", "noconfirm": "without confirming"}
	for _, m := range modes {
		c := testCid(m).String()
		f.fail[c] = m
		tc.add("fail-"+m, c, "both")
	}
	for i := range 5 {
		tc.add(fmt.Sprintf("ok-%d", i), testCid(fmt.Sprint("ok", i)).String(), "both")
	}
	// A malformed narinfo and a CID that does not parse.
	os.WriteFile(filepath.Join(tc.dir, hashPart("junk")+".narinfo"), []byte("StorePath: x\n"), 0o644)
	tc.add("badcid", "not-a-cid", "none")
	// A narinfo file whose name is no hash part.
	os.WriteFile(filepath.Join(tc.dir, "README.narinfo"), []byte("x\n"), 0o644)
	s, log := runMirror(t, tc, tc.entries(), k, Options{})
	if s.Pinned != 5 || s.Failed != len(modes)+3 {
		t.Fatalf("%+v\n%s", s, log)
	}
	for _, m := range modes {
		if !strings.Contains(log, "fail-"+m) || !strings.Contains(log, want[m]) || !strings.Contains(log, testCid(m).String()) {
			t.Errorf("failure %s not named with its path, CID and cause:\n%s", m, log)
		}
	}
	for _, w := range []string{hashPart("junk"), "not-a-cid", "README"} {
		if !strings.Contains(log, w) {
			t.Errorf("log does not name %s:\n%s", w, log)
		}
	}
}

// A pin on which the node fetches nothing is cancelled after the stall
// bound; one that makes progress for longer than the bound is not.
func TestMirrorStall(t *testing.T) {
	tc := newTestCache(t)
	f, k := newFakeKubo(t)
	stuck, slow := testCid("stuck").String(), testCid("slow").String()
	f.stall[stuck] = true
	f.slow[slow] = 40 // 40 x 5 ms of progress, over a 50 ms stall bound
	tc.add("stuck", stuck, "both")
	tc.add("slow", slow, "both")
	done := make(chan struct{})
	var s Summary
	var log string
	go func() {
		defer close(done)
		s, log = runMirror(t, tc, tc.entries(), k, Options{StallTimeout: 50 * time.Millisecond})
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("a stalled pin hangs the mirror")
	}
	if s.Pinned != 1 || s.Failed != 1 || !strings.Contains(log, "no block fetched") || !strings.Contains(log, stuck) {
		t.Fatalf("%+v\n%s", s, log)
	}
}

// Two store paths with one NAR (one CID) make one pin.
func TestMirrorSameCidOnce(t *testing.T) {
	tc := newTestCache(t)
	f, k := newFakeKubo(t)
	c := testCid("shared").String()
	f.slow[c] = 5
	tc.add("a", c, "both")
	tc.add("b", c, "both")
	// CIDv0 and v1 of one dag-pb DAG are one pin too.
	v0 := cid.NewCidV0(testCid("v0").Hash())
	f.pins[cid.NewCidV1(cid.DagProtobuf, v0.Hash()).String()] = true
	tc.add("c", v0.String(), "both")
	s, log := runMirror(t, tc, tc.entries(), k, Options{Jobs: 4})
	if s.Pinned != 1 || s.AlreadyPinned != 2 || f.calls(c) != 1 {
		t.Fatalf("%+v, %d pin/add calls\n%s", s, f.calls(c), log)
	}
}

// An HTTP cache cannot be listed: the store paths come one a line (as on
// standard input), and a line naming no narinfo in the cache fails alone.
func TestMirrorHTTPCache(t *testing.T) {
	tc := newTestCache(t)
	f, k := newFakeKubo(t)
	var lines []string
	for i := range 3 {
		name := fmt.Sprintf("http-%d", i)
		h := tc.add(name, testCid(name).String(), "both")
		lines = append(lines, narindex.StoreDir+"/"+h+"-"+name)
	}
	lines = append(lines, hashPart("absent"), "# a comment", "")
	srv := httptest.NewServer(http.FileServer(http.Dir(tc.dir)))
	t.Cleanup(srv.Close)
	cache, err := narindex.OpenSubstituter(srv.URL, narindex.SubstituterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	s, err := Run(context.Background(), cache, LineEntries(strings.NewReader(strings.Join(lines, "\n")), "stdin"), k,
		Options{TrustedKeys: []narindex.PublicKey{tc.pub}, Log: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil || s.Pinned != 3 || s.Failed != 1 || !strings.Contains(log.String(), hashPart("absent")) {
		t.Fatalf("%+v %v\n%s", s, err, log.String())
	}
	if f.calls(testCid("http-0").String()) != 1 {
		t.Error("not pinned")
	}
}

// The mirror warns when its node would announce every block.
func TestAnnouncesEveryBlock(t *testing.T) {
	f, k := newFakeKubo(t)
	for _, tc := range []struct {
		config map[string]string
		want   bool
	}{
		{nil, true}, // kubo's defaults
		{map[string]string{"Provide.Strategy": `"all"`}, true},
		{map[string]string{"Provide.Strategy": `"roots"`}, false},
		{map[string]string{"Provide.Strategy": `"pinned"`}, false},
		{map[string]string{"Provide.Enabled": `false`}, false},
		{map[string]string{"Provide.Enabled": `true`, "Provide.Strategy": `"all"`}, true},
	} {
		f.mu.Lock()
		f.config = tc.config
		f.mu.Unlock()
		got, err := k.AnnouncesEveryBlock(context.Background())
		if err != nil || got != tc.want {
			t.Errorf("config %v: %v, %v; want %v", tc.config, got, err, tc.want)
		}
	}
}

// Entries named by argument or line.
func TestEntries(t *testing.T) {
	h := hashPart("x")
	dir := t.TempDir()
	link := filepath.Join(dir, "result")
	os.Symlink(narindex.StoreDir+"/"+h+"-hello-2.12", link)
	for in, want := range map[string]string{
		narindex.StoreDir + "/" + h + "-hello":        h,
		narindex.StoreDir + "/" + h + "-hello/bin/sh": h,
		h + "-hello":                            h,
		h:                                       h,
		h + ".narinfo":                          h,
		"  " + h + "\t":                         h,
		link:                                    h,
		"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz":      "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", // checked by the cache
		"/etc/passwd":                           "",
		"notahash-x":                            "",
		"":                                      "",
		narindex.StoreDir + "/short-hello":      "",
		filepath.Join(dir, "missing") + "/" + h: "",
	} {
		got, err := HashPart(in)
		if want == "" {
			if err == nil {
				t.Errorf("HashPart(%q) = %q, want an error", in, got)
			} else if in != "" && !strings.Contains(err.Error(), filepath.Base(strings.TrimSpace(in))) {
				t.Errorf("HashPart(%q): error %q does not name the input", in, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("HashPart(%q) = %q, %v, want %q", in, got, err, want)
		}
	}
	var got []Entry
	for e := range LineEntries(strings.NewReader("# comment\n\n"+h+"\n/etc/passwd\n"+h+"-x\n"), "stdin") {
		got = append(got, e)
	}
	if len(got) != 3 || got[0].Hash != h || got[1].Err == nil || !strings.Contains(got[1].Err.Error(), "stdin line 4") || got[2].Hash != h {
		t.Errorf("LineEntries: %+v", got)
	}
}

// Answers kubo might give to pin/ls and pin/add.
func TestParseAnswers(t *testing.T) {
	c := testCid("a")
	var got []cid.Cid
	err := parsePinList(strings.NewReader(fmt.Sprintf(`{"Cid":"%s","Type":"recursive"}`+"\n"+`{"Cid":"%s","Type":"indirect"}`, c, testCid("b"))), func(x cid.Cid) { got = append(got, x) })
	if err != nil || len(got) != 1 || !got[0].Equals(c) {
		t.Errorf("pin list: %v %v", got, err)
	}
	for _, bad := range []string{`{"Cid":"xyz","Type":"recursive"}`, `{"Cid":`, `[1,2]`} {
		if err := parsePinList(strings.NewReader(bad), func(cid.Cid) {}); err == nil {
			t.Errorf("pin list %q accepted", bad)
		}
	}
	var prog []PinProgress
	err = parsePinAnswer(strings.NewReader(`{"Progress":1,"Bytes":5}{"Progress":2,"Bytes":9}`+"\n"+fmt.Sprintf(`{"Pins":["%s"]}`, c)), c, func(p PinProgress) { prog = append(prog, p) })
	if err != nil || len(prog) != 2 || prog[1] != (PinProgress{2, 9}) {
		t.Errorf("pin answer: %v %v", prog, err)
	}
	for _, bad := range []string{``, `{"Pins":[]}`, `{"Pins":["xyz"]}`, fmt.Sprintf(`{"Pins":["%s"]}`, testCid("b")), `{"Progress":"x"}`} {
		if err := parsePinAnswer(strings.NewReader(bad), c, nil); err == nil {
			t.Errorf("pin answer %q accepted", bad)
		}
	}
}

func FuzzParsePinAnswer(f *testing.F) {
	c := testCid("a")
	f.Add([]byte(fmt.Sprintf(`{"Progress":1,"Bytes":5}{"Pins":["%s"]}`, c)))
	f.Add([]byte(`{"Pins":["xyz"]}`))
	f.Add([]byte(`{"Progress":-1,"Bytes":18446744073709551615}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		err := parsePinAnswer(bytes.NewReader(b), c, func(PinProgress) {})
		if err == nil && !bytes.Contains(b, []byte("Pins")) {
			t.Errorf("%q accepted without confirming the pin", b)
		}
	})
}

func FuzzParsePinList(f *testing.F) {
	f.Add([]byte(fmt.Sprintf(`{"Cid":"%s","Type":"recursive"}`, testCid("a"))))
	f.Add([]byte(`{"Cid":"Qm","Type":"recursive"}{"Cid":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		parsePinList(bytes.NewReader(b), func(c cid.Cid) {
			if !c.Defined() {
				t.Errorf("undefined CID from %q", b)
			}
		})
	})
}

func FuzzHashPart(f *testing.F) {
	for _, s := range []string{"/nix/store/" + hashPart("x") + "-a", hashPart("x"), hashPart("x") + ".narinfo", "a-b", "/", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := HashPart(s)
		if err == nil && (strings.ContainsAny(h, "/-") || h == "") {
			t.Errorf("HashPart(%q) = %q", s, h)
		}
	})
}

// syncWriter is safe for the progress goroutine and the test.
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
