package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"io/fs"
	"log"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/boxo/ipld/merkledag"
	"github.com/ipfs/boxo/ipld/unixfs"
	unixfspb "github.com/ipfs/boxo/ipld/unixfs/pb"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	"github.com/ipfs/kubo/core/coreiface/options"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fetch/fetchtest"
	"github.com/ipnix/ipnix/narindex"
)

// Faults where they live in reality, for the fault catalogue
// (faults_test.go): block sources on loopback that misbehave on request
// (faultServer in front of a real kubo's gateway or RPC API, a silent
// server, a dead port), DAGs put into kubo that the publisher would never
// write, and block files flipped in a mount's cache directory.

// faultMode is what a fault server does with a block request it faults.
type faultMode string

const (
	modePass     faultMode = "pass"             // forward to the upstream unchanged
	modeFlip     faultMode = "flip-bit"         // the true block with one bit flipped
	modeTruncate faultMode = "truncate"         // the first half of the block, as a complete answer
	modeJunk     faultMode = "junk-3MiB"        // 200 and 3 MiB of random bytes, no length announced
	modeHTML     faultMode = "html-200"         // 200 and an HTML page, as a captive portal would
	modeHang     faultMode = "hang"             // accept, never answer, until the client gives up
	modeTrickle  faultMode = "trickle"          // the true block at 1 byte per 100 ms
	modeCut      faultMode = "close-mid-stream" // the true length announced, connection closed halfway
	// modeStreamError is how kubo's RPC reports a failure after it has
	// started answering: half the body, a clean end, and the error in the
	// X-Stream-Error trailer.
	modeStreamError faultMode = "stream-error-trailer"
)

// gatewayFaults are the faults a gateway (or kubo) may commit on the way.
var gatewayFaults = []faultMode{modeFlip, modeTruncate, modeJunk, modeHTML, modeHang, modeTrickle, modeCut}

// hashFaults are the modes whose bytes arrive whole but do not hash to the CID.
func (m faultMode) hashFault() bool { return m == modeFlip || m == modeTruncate || m == modeHTML }

// faultServer sits in front of a real kubo (its trustless gateway or its
// RPC API) on loopback and answers block requests as told: pass, or commit
// one fault. Requests that are not block requests always pass. Handlers
// return when the client goes away or the server is stopped (in cleanup).
type faultServer struct {
	URL string // http://127.0.0.1:port

	// blockCid returns the CID a request asks for, or "" when it is not a
	// block request (those are always passed).
	blockCid func(r *http.Request) string

	srv   *httptest.Server
	proxy *httputil.ReverseProxy
	stop  chan struct{}

	mu        sync.Mutex
	mode      faultMode
	passFirst int             // block requests still passed before mode applies
	every     int             // when > 0: only every n-th block request is faulted
	count     int             // block requests seen under every
	chance    float64         // when > 0: each block request is faulted with this probability
	passCids  map[string]bool // CIDs always passed

	Requests atomic.Int64 // block requests seen
	Faulted  atomic.Int64 // block requests answered with a fault
	// RangesFaulted counts requests for a range of a file's bytes (a Range
	// header, ipnix's ranged and streamed fetches) answered with a fault.
	RangesFaulted atomic.Int64
}

// startFaultGateway starts a fault-injecting HTTP trustless gateway in
// front of upstream (a kubo gateway URL). It passes until told otherwise.
func startFaultGateway(t *testing.T, upstream string) *faultServer {
	t.Helper()
	return startFaultServer(t, upstream, func(r *http.Request) string {
		if c, ok := strings.CutPrefix(r.URL.Path, "/ipfs/"); ok && r.Method == http.MethodGet {
			return c
		}
		return ""
	})
}

// startFaultAPI starts a fault-injecting proxy in front of a kubo RPC API
// (api as a multiaddr or URL); its faults apply to /api/v0/block/get.
func startFaultAPI(t *testing.T, api string) *faultServer {
	t.Helper()
	u, _, err := fetch.KuboAPIURL(api)
	if err != nil {
		t.Fatal(err)
	}
	return startFaultServer(t, u, func(r *http.Request) string {
		if r.URL.Path == "/api/v0/block/get" {
			return r.URL.Query().Get("arg")
		}
		return ""
	})
}

func startFaultServer(t *testing.T, upstream string, blockCid func(*http.Request) string) *faultServer {
	t.Helper()
	up, err := url.Parse(upstream)
	if err != nil || up.Host == "" {
		t.Fatalf("fault server upstream %q: %v", upstream, err)
	}
	s := &faultServer{blockCid: blockCid, mode: modePass, stop: make(chan struct{})}
	s.proxy = httputil.NewSingleHostReverseProxy(up)
	// Clients that give up (a timeout is the point of several modes) make
	// the proxy log; that is expected noise.
	s.proxy.ErrorLog = log.New(io.Discard, "", 0)
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	t.Cleanup(s.Close)
	return s
}

// Close stops the server and every handler still running.
func (s *faultServer) Close() {
	select {
	case <-s.stop:
		return
	default:
	}
	close(s.stop)
	s.srv.CloseClientConnections()
	s.srv.Close()
}

// Set faults every block request with mode (modePass: none).
func (s *faultServer) Set(mode faultMode) { s.setPolicy(mode, 0, 0, nil) }

// SetAfter passes the next k block requests, then faults with mode.
func (s *faultServer) SetAfter(k int, mode faultMode) { s.setPolicy(mode, k, 0, nil) }

// SetEvery faults every n-th block request with mode and passes the rest.
func (s *faultServer) SetEvery(n int, mode faultMode) { s.setPolicy(mode, 0, n, nil) }

// SetChance faults each block request with probability p (0 < p < 1).
func (s *faultServer) SetChance(p float64, mode faultMode) {
	s.setPolicy(mode, 0, 0, nil)
	s.mu.Lock()
	s.chance = p
	s.mu.Unlock()
}

// SetExcept passes requests for the given CIDs and faults all others.
func (s *faultServer) SetExcept(cids []string, mode faultMode) { s.setPolicy(mode, 0, 0, cids) }

func (s *faultServer) setPolicy(mode faultMode, passFirst, every int, cids []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mode, s.passFirst, s.every, s.count, s.chance = mode, passFirst, every, 0, 0
	s.passCids = make(map[string]bool)
	for _, c := range cids {
		s.passCids[c] = true
	}
}

// decide picks what to do with a block request for cid.
func (s *faultServer) decide(cid string) faultMode {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.passCids[cid]:
		return modePass
	case s.passFirst > 0:
		s.passFirst--
		return modePass
	case s.every > 0:
		s.count++
		if s.count%s.every != 0 {
			return modePass
		}
	case s.chance > 0:
		if mrand.Float64() >= s.chance {
			return modePass
		}
	}
	return s.mode
}

func (s *faultServer) serve(w http.ResponseWriter, r *http.Request) {
	c := s.blockCid(r)
	if c == "" {
		s.proxy.ServeHTTP(w, r)
		return
	}
	s.Requests.Add(1)
	mode := s.decide(c)
	if mode == modePass {
		s.proxy.ServeHTTP(w, r)
		return
	}
	s.Faulted.Add(1)
	if r.Header.Get("Range") != "" {
		s.RangesFaulted.Add(1)
	}
	switch mode {
	case modeHang:
		s.wait(r, 0)
		return
	case modeJunk:
		junk := make([]byte, 3<<20)
		rand.Read(junk)
		w.Header().Set("Content-Type", "application/vnd.ipld.raw")
		w.WriteHeader(http.StatusOK)
		w.Write(junk) // fails once the client has read its fill
		return
	case modeHTML:
		page := []byte("<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body><p>Please sign in to use this network.</p></body></html>\n")
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Length", strconv.Itoa(len(page)))
		w.WriteHeader(http.StatusOK)
		w.Write(page)
		return
	}
	// The remaining modes start from the true answer.
	rec := httptest.NewRecorder()
	s.proxy.ServeHTTP(rec, r)
	body := rec.Body.Bytes()
	// A block (200) or a range of a file's bytes (206): both are lied about
	// the same way, keeping the status and Content-Range of the truth.
	code := rec.Code
	if (code != http.StatusOK && code != http.StatusPartialContent) || len(body) == 0 {
		copyHeader(w.Header(), rec.Header())
		w.WriteHeader(rec.Code)
		w.Write(body)
		return
	}
	copyHeader(w.Header(), rec.Header())
	switch mode {
	case modeFlip:
		body = bytes.Clone(body)
		body[len(body)/2] ^= 0x10
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(code)
		w.Write(body)
	case modeTruncate:
		body = body[:len(body)/2]
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(code)
		w.Write(body)
	case modeTrickle:
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(code)
		fl := http.NewResponseController(w)
		for i := range body {
			if _, err := w.Write(body[i : i+1]); err != nil {
				return
			}
			if fl.Flush() != nil || !s.wait(r, 100*time.Millisecond) {
				return
			}
		}
	case modeCut:
		if rec.Header().Get("Trailer") == "" {
			// A gateway announces the length; kubo's RPC streams chunks.
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		w.WriteHeader(code)
		w.Write(body[:len(body)/2])
		http.NewResponseController(w).Flush()
		// Close the connection without finishing the body.
		panic(http.ErrAbortHandler)
	case modeStreamError:
		w.Header().Set("Trailer", "X-Stream-Error")
		w.WriteHeader(code)
		w.Write(body[:len(body)/2])
		w.Header().Set("X-Stream-Error", "fault injected: block/get broke off")
	default:
		panic("unknown fault mode " + string(mode))
	}
}

// wait waits d (forever when 0) and reports whether the client and the
// server are still there.
func (s *faultServer) wait(r *http.Request, d time.Duration) bool {
	var tick <-chan time.Time
	if d > 0 {
		tm := time.NewTimer(d)
		defer tm.Stop()
		tick = tm.C
	}
	select {
	case <-tick:
		return true
	case <-r.Context().Done():
	case <-s.stop:
	}
	return false
}

func copyHeader(dst, src http.Header) {
	for k, vs := range src {
		if k == "Content-Length" || k == "Trailer" {
			continue
		}
		dst[k] = append([]string(nil), vs...)
	}
}

// startSilentServer listens on loopback, accepts connections and never
// says a word: a source that hangs below HTTP. Stopped in cleanup.
func startSilentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go io.Copy(io.Discard, c) // read the requests, answer nothing
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + ln.Addr().String()
}

// deadURL is a loopback address where nothing listens: connections are
// refused at once.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// The fault servers do what they say, and the fetch sources see each
// fault as the error the catalogue expects. Needs kubo only.
func TestFaultServerModes(t *testing.T) {
	k := startKubo(t)
	data := make([]byte, 200<<10)
	rand.Read(data)
	c, err := cid.Decode(k.ipfs(t, bytes.NewReader(data), "add", "-Q", "--cid-version=1", "--raw-leaves"))
	if err != nil {
		t.Fatal(err)
	}
	gw := startFaultGateway(t, k.Gateway)
	api := startFaultAPI(t, k.api)
	const timeout = time.Second
	gsrc, err := fetch.NewGateway(gw.URL, timeout)
	if err != nil {
		t.Fatal(err)
	}
	ksrc, err := fetch.NewKubo(api.URL, timeout)
	if err != nil {
		t.Fatal(err)
	}
	want := map[faultMode]func(error) bool{
		modePass:     func(err error) bool { return err == nil },
		modeFlip:     func(err error) bool { return errors.Is(err, fetch.ErrHashMismatch) },
		modeTruncate: func(err error) bool { return errors.Is(err, fetch.ErrHashMismatch) },
		modeHTML:     func(err error) bool { return errors.Is(err, fetch.ErrHashMismatch) },
		modeJunk:     func(err error) bool { return errors.Is(err, fetch.ErrBlockTooLarge) },
		modeHang:     func(err error) bool { return errors.Is(err, context.DeadlineExceeded) },
		modeTrickle:  func(err error) bool { return errors.Is(err, context.DeadlineExceeded) },
		modeCut: func(err error) bool {
			return err != nil && !errors.Is(err, fetch.ErrHashMismatch) && !errors.Is(err, context.DeadlineExceeded)
		},
		// Either the trailer is seen, or the short block fails its hash.
		modeStreamError: func(err error) bool { return err != nil && !errors.Is(err, context.DeadlineExceeded) },
	}
	for _, src := range []struct {
		name string
		fs   *faultServer
		bg   fetch.BlockGetter
	}{{"gateway", gw, gsrc}, {"kubo-rpc", api, ksrc}} {
		for _, mode := range append([]faultMode{modePass, modeStreamError}, gatewayFaults...) {
			src.fs.Set(mode)
			start := time.Now()
			b, err := fetch.Verify(src.bg, nil).GetBlock(context.Background(), c)
			took := time.Since(start)
			if !want[mode](err) {
				t.Errorf("%s %s: %v", src.name, mode, err)
			}
			if err == nil && !bytes.Equal(b.RawData(), data) {
				t.Errorf("%s %s: wrong bytes", src.name, mode)
			}
			if took > timeout+5*time.Second {
				t.Errorf("%s %s: took %v with a %v timeout", src.name, mode, took, timeout)
			}
			t.Logf("%s %s: %v in %v", src.name, mode, err, took.Round(time.Millisecond))
		}
		if n := src.fs.Faulted.Load(); n != int64(len(gatewayFaults)+1) {
			t.Errorf("%s: %d faulted of %d requests", src.name, n, src.fs.Requests.Load())
		}
	}

	// Policies: the first K requests pass; listed CIDs pass; every n-th.
	gw.SetAfter(2, modeFlip)
	for i, ok := range []bool{true, true, false} {
		if _, err := fetch.Verify(gsrc, nil).GetBlock(context.Background(), c); (err == nil) != ok {
			t.Errorf("SetAfter(2): request %d: %v", i+1, err)
		}
	}
	gw.SetExcept([]string{c.String()}, modeFlip)
	if _, err := fetch.Verify(gsrc, nil).GetBlock(context.Background(), c); err != nil {
		t.Errorf("SetExcept: listed CID faulted: %v", err)
	}
	gw.SetEvery(2, modeFlip)
	for i, ok := range []bool{true, false, true, false} {
		if _, err := fetch.Verify(gsrc, nil).GetBlock(context.Background(), c); (err == nil) != ok {
			t.Errorf("SetEvery(2): request %d: %v", i+1, err)
		}
	}
	gw.SetChance(0.5, modeFlip)
	passed := 0
	for range 40 {
		if _, err := fetch.Verify(gsrc, nil).GetBlock(context.Background(), c); err == nil {
			passed++
		}
	}
	if passed == 0 || passed == 40 {
		t.Errorf("SetChance(0.5): %d of 40 requests passed", passed)
	}
}

// --- faults stored where they would be: in kubo and in the cache directory ---

// flipBlockFiles flips one byte in every block file of the disk cache
// larger than 64 KiB (leaves; the small DAG nodes needed for lookups are
// left alone) and returns how many it changed.
func flipBlockFiles(t *testing.T, cacheDir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(filepath.Join(cacheDir, "blocks"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil || len(b) <= 64<<10 {
			return err
		}
		b[len(b)/3] ^= 0x01
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			return err
		}
		n++
		// Keep the mtime: it orders eviction, not validity.
		return os.Chtimes(p, fi.ModTime(), fi.ModTime())
	})
	must(t, err)
	if n == 0 {
		t.Fatal("no block files to corrupt in the cache directory")
	}
	return n
}

// realCid is the published IpfsCid of sp.
func (e *faultEnv) realCid(t *testing.T, sp string) cid.Cid {
	t.Helper()
	c, err := cid.Decode(e.p.narInfo(t, sp).IpfsCid)
	must(t, err)
	return c
}

// nar is the published NAR of sp.
func (e *faultEnv) nar(t *testing.T, sp string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.p.cache, e.p.narInfo(t, sp).URL))
	must(t, err)
	return b
}

// fakeEntry writes sp's narinfo into dir with IpfsCid replaced by c and
// signed (Sig and IpfsCidSig) by the fault key, which the mounts trust:
// a substituter with a trusted key that publishes a bad DAG.
func (e *faultEnv) fakeEntry(t *testing.T, dir, sp, c string) {
	t.Helper()
	e.p.copyEntry(t, dir, sp, func(ni *narindex.NarInfo) {
		ni.IpfsCid = c
		must(t, ni.Sign(e.key))
		must(t, ni.SignCid(e.key))
	})
}

// putBlocks stores blocks in the kubo node.
func (e *faultEnv) putBlocks(t *testing.T, bs ...blocks.Block) {
	t.Helper()
	api, _, err := fetch.NewKuboClient(e.p.kubo.api)
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, b := range bs {
		codec := "raw"
		if b.Cid().Type() == cid.DagProtobuf {
			codec = "dag-pb"
		}
		st, err := api.Block().Put(ctx, bytes.NewReader(b.RawData()), options.Block.CidCodec(codec))
		if err != nil {
			t.Fatalf("block put %s: %v", b.Cid(), err)
		}
		if got := st.Path().RootCid(); !bytes.Equal(got.Hash(), b.Cid().Hash()) {
			t.Fatalf("kubo stored %s as %s", b.Cid(), got)
		}
	}
}

// getBlock fetches a block from kubo, verified.
func (e *faultEnv) getBlock(t *testing.T, c cid.Cid) blocks.Block {
	t.Helper()
	k, err := fetch.NewKubo(e.p.kubo.api, 30*time.Second)
	must(t, err)
	b, err := fetch.Verify(k, nil).GetBlock(context.Background(), c)
	must(t, err)
	return b
}

// fileNode builds a dag-pb UnixFS file node over children with the given
// block sizes and declared file size.
func fileNode(t *testing.T, children []cid.Cid, sizes []uint64, fileSize uint64) *merkledag.ProtoNode {
	t.Helper()
	fsn := unixfs.NewFSNode(unixfspb.Data_File)
	var sum uint64
	for _, s := range sizes {
		fsn.AddBlockSize(s)
		sum += s
	}
	// AddBlockSize grows the declared size; set it to what is claimed.
	fsn.UpdateFilesize(int64(fileSize) - int64(sum))
	data, err := fsn.GetBytes()
	must(t, err)
	nd := merkledag.NodeWithData(data)
	must(t, nd.SetCidBuilder(merkledag.V1CidPrefix()))
	for i, c := range children {
		must(t, nd.AddRawLink("", &ipld.Link{Cid: c, Size: sizes[i]}))
	}
	return nd
}

// chain puts depth single-link file nodes above the real root c, each
// declaring the whole NAR: every block verifies, the DAG is too deep.
func (e *faultEnv) chain(t *testing.T, c cid.Cid, depth int) cid.Cid {
	t.Helper()
	size := uint64(e.p.narInfoByCid(t, c).NarSize)
	var nodes []blocks.Block
	for range depth {
		nd := fileNode(t, []cid.Cid{c}, []uint64{size}, size)
		nodes = append(nodes, nd)
		c = nd.Cid()
	}
	e.putBlocks(t, nodes...)
	return c
}

// splitLie stores sp's NAR as two raw leaves under a root whose block
// sizes move 100 bytes from the second to the first: the total is right,
// each leaf's size is wrong.
func (e *faultEnv) splitLie(t *testing.T, sp string) cid.Cid {
	t.Helper()
	nar := e.nar(t, sp)
	half := len(nar) / 2
	a, b := rawBlock(t, nar[:half]), rawBlock(t, nar[half:])
	root := fileNode(t, []cid.Cid{a.Cid(), b.Cid()}, []uint64{uint64(half + 100), uint64(len(nar) - half - 100)}, uint64(len(nar)))
	e.putBlocks(t, a, b, root)
	return root.Cid()
}

func rawBlock(t *testing.T, data []byte) blocks.Block {
	t.Helper()
	c, err := cid.V1Builder{Codec: cid.Raw, MhType: 0x12}.Sum(data)
	must(t, err)
	b, err := blocks.NewBlockWithCid(data, c)
	must(t, err)
	return b
}

// shiftSizes rewrites the real root of sp's NAR with lying block sizes:
// 100 bytes moved from the second link to the first (the total still
// right), or, with bad sum, 100 bytes added to the first while the root
// still declares the NAR's size.
func (e *faultEnv) shiftSizes(t *testing.T, sp string, badSum bool) cid.Cid {
	t.Helper()
	real := e.getBlock(t, e.realCid(t, sp))
	pn, err := merkledag.DecodeProtobuf(real.RawData())
	must(t, err)
	fsn, err := unixfs.FSNodeFromBytes(pn.Data())
	must(t, err)
	sizes := fsn.BlockSizes()
	if len(sizes) < 2 {
		t.Fatalf("root of %s has %d links", sp, len(sizes))
	}
	sizes[0] += 100
	if !badSum {
		sizes[1] -= 100
	}
	var children []cid.Cid
	for _, l := range pn.Links() {
		children = append(children, l.Cid)
	}
	root := fileNode(t, children, sizes, fsn.FileSize())
	e.putBlocks(t, root)
	return root.Cid()
}

// putLayout stores sp's NAR in kubo laid out as o says and returns the root.
func (e *faultEnv) putLayout(t *testing.T, sp string, o fetchtest.Options) cid.Cid {
	t.Helper()
	st := fetchtest.NewStore()
	root, err := st.AddFile(e.nar(t, sp), o)
	must(t, err)
	all, err := st.AllCids(context.Background())
	must(t, err)
	var bs []blocks.Block
	for _, c := range all {
		b, err := st.GetBlock(context.Background(), c)
		must(t, err)
		bs = append(bs, b)
	}
	e.putBlocks(t, bs...)
	return root
}

// narInfoByCid finds the published narinfo whose IpfsCid is c.
func (p *published) narInfoByCid(t *testing.T, c cid.Cid) *narindex.NarInfo {
	t.Helper()
	for _, sp := range p.closure.paths {
		if ni := p.narInfo(t, sp); ni.IpfsCid == c.String() {
			return ni
		}
	}
	t.Fatalf("no published narinfo has IpfsCid %s", c)
	return nil
}
