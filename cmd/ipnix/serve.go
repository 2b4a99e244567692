package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/spf13/pflag"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/integrity"
	"github.com/ipnix/ipnix/ipfscache"
	"github.com/ipnix/ipnix/narindex"
)

const serveSynopsis = `Usage: ipnix serve [flags]

Serve an HTTP binary cache that plain Nix can substitute from, in front of
the same substituters and IPFS sources a mount uses: nix-cache-info,
<hash>.narinfo (the signed fields unchanged; URL pointing at this server's
NAR route, Compression: none), <hash>.ls, and NARs streamed from verified
blocks. Every narinfo passes the checks a mount applies. A NAR is hashed as
it streams and its last bytes are sent only once it has matched NarHash; on
a mismatch the response is cut short (Nix then rejects it) and the path is
refused from then on. Range requests are answered for paths whose CID is
signed by a trusted key (every block is checked against it). For machines
without FUSE: substituters = http://127.0.0.1:8480 in nix.conf.

Example:
  ipnix serve --substituter file:///srv/cache \
    --trusted-public-key "$(cat cache.pub)" --listen 127.0.0.1:8480
`

type serveConfig struct {
	Listen        string
	Substituters  []string
	IpnsRefresh   time.Duration
	TrustedKeys   []string
	NoRequireSigs bool
	RequireCidSig bool
	ReadTimeout   time.Duration
	Blocks        blockFlags
	CacheSize     int64
	Debug         bool
}

func parseServeArgs(args []string, out io.Writer) (*serveConfig, error) {
	c := &serveConfig{}
	fs := newFlagSet("serve", serveSynopsis, out)
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:8480", "address to serve HTTP on; a non-loopback address is served with a warning")
	fs.StringArrayVar(&c.Substituters, "substituter", nil, "binary cache holding narinfos with IpfsCid, as for ipnix mount: file://, http(s)://, ipfs://CID or ipns://NAME (repeatable; asked in order)")
	fs.DurationVar(&c.IpnsRefresh, "ipns-refresh", ipfscache.DefaultRefresh, ipnsRefreshHelp)
	fs.StringArrayVar(&c.TrustedKeys, "trusted-public-key", nil, "public key narinfos must be signed with, as name:base64 (repeatable)")
	fs.BoolVar(&c.RequireCidSig, "require-cid-sig", false, "refuse paths whose narinfo has no IpfsCidSig by a trusted key")
	fs.BoolVar(&c.NoRequireSigs, "no-require-sigs", false, "serve unsigned narinfos (NOT recommended)")
	fs.StringVar(&c.Blocks.API, "api", "", "kubo RPC API, as for ipnix mount")
	fs.StringVar(&c.Blocks.KuboRepo, "kubo-repo", "", kuboRepoHelp)
	fs.StringArrayVar(&c.Blocks.Gateways, "gateway", nil, "HTTP trustless gateway to fetch blocks from (repeatable); asked before --api, and with no --api the only block sources (no kubo needed)")
	c.Blocks.MemoryBytes = 64 << 20
	fs.Var(sizeValue{&c.Blocks.MemoryBytes}, "memory-cache", "bytes of blocks kept in memory")
	fs.StringVar(&c.Blocks.CacheDir, "cache-dir", "", "directory for an on-disk block cache (see --disk-blocks); none if empty")
	fs.Var(diskBlocksValue{&c.Blocks.DiskBlocks}, "disk-blocks", diskBlocksHelp)
	c.CacheSize = 10 << 30
	fs.Var(sizeValue{&c.CacheSize}, "cache-size", "bytes the on-disk block cache may hold")
	fs.DurationVar(&c.ReadTimeout, "read-timeout", defaultReadTimeout, "longest wait for the blocks of one piece of a response before it fails")
	fs.DurationVar(&c.Blocks.BlockTimeout, "block-timeout", defaultBlockTimeout, "longest wait for one block from one source before the next is tried")
	fs.BoolVar(&c.Debug, "debug", false, "log debug messages")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err}
	}
	c.Blocks.DiskBytes = c.CacheSize
	switch {
	case fs.NArg() > 0:
		return nil, usageError{fmt.Errorf("serve takes no arguments (got %q)", fs.Args())}
	case len(c.Substituters) == 0:
		return nil, usageError{errors.New("no --substituter given: where should narinfos come from?")}
	case len(c.TrustedKeys) == 0 && !c.NoRequireSigs:
		return nil, usageError{errors.New("no --trusted-public-key given; signatures are required (pass --no-require-sigs to accept unsigned narinfos)")}
	case c.ReadTimeout <= 0 || c.Blocks.BlockTimeout <= 0:
		return nil, usageError{errors.New("--read-timeout and --block-timeout must be positive")}
	}
	if err := checkIPFSSubstituters(c.Substituters, c.IpnsRefresh); err != nil {
		return nil, usageError{err}
	}
	return c, nil
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseServeArgs(args, stdout)
	if err != nil {
		return err
	}
	log := newLogger(stderr, c.Debug)
	st, res, runIPNS, err := openSources(ctx, c.Blocks,
		trustFlags{c.Substituters, c.TrustedKeys, !c.NoRequireSigs, c.RequireCidSig, c.IpnsRefresh}, log)
	if err != nil {
		return err
	}
	defer st.Close()
	runIPNS(ctx)
	warnUnanswered(ctx, res.Substituters, c.Blocks.Gateways, log)
	if err := checkLoopback(c.Listen); err != nil {
		log.Warn("serving on a non-loopback address: anyone who reaches it can fetch what the substituters hold", "listen", c.Listen)
	}
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return usageError{fmt.Errorf("--listen %q: %w", c.Listen, err)}
	}
	s := &cacheServer{res: res, blocks: st, readTimeout: c.ReadTimeout, log: log, bad: map[string]error{},
		ahead: integrity.NewBudget(integrity.DefaultAheadBytes)}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(stderr, "ipnix: serving http://%s (substituters: %s; block sources: %s)\n", ln.Addr(), strings.Join(c.Substituters, " "), strings.Join(st.names, ", "))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	notifyReady(log)
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		fmt.Fprintf(stderr, "ipnix: stopped; fetched %d blocks, %d bytes\n", st.fetched.Blocks.Load(), st.fetched.Bytes.Load())
		return nil
	}
}

// cacheServer answers Nix's binary-cache requests from verified data.
type cacheServer struct {
	res         *narindex.Resolver
	blocks      *blockStack
	readTimeout time.Duration
	log         *slog.Logger
	ahead       *integrity.Budget

	mu  sync.Mutex
	bad map[string]error // hash part -> why its NAR was refused
}

func (s *cacheServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "read-only binary cache", http.StatusMethodNotAllowed)
		return
	}
	p := strings.TrimPrefix(r.URL.Path, "/")
	switch {
	case p == "nix-cache-info":
		io.WriteString(w, "StoreDir: "+narindex.StoreDir+"\nWantMassQuery: 1\nPriority: 30\n")
	case strings.HasSuffix(p, ".narinfo") && !strings.Contains(p, "/"):
		s.narinfo(w, r, strings.TrimSuffix(p, ".narinfo"))
	case strings.HasSuffix(p, ".ls") && !strings.Contains(p, "/"):
		s.listing(w, r, strings.TrimSuffix(p, ".ls"))
	case strings.HasPrefix(p, "nar/") && strings.HasSuffix(p, ".nar"):
		s.nar(w, r, strings.TrimSuffix(strings.TrimPrefix(p, "nar/"), ".nar"))
	default:
		http.NotFound(w, r)
	}
}

// resolve finds the accepted narinfo for a hash part, answering the
// client itself when there is none.
func (s *cacheServer) resolve(w http.ResponseWriter, r *http.Request, hash string) *narindex.Resolved {
	s.mu.Lock()
	bad := s.bad[hash]
	s.mu.Unlock()
	if bad != nil {
		http.Error(w, "refused: "+bad.Error(), http.StatusNotFound)
		return nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.readTimeout)
	defer cancel()
	res, err := s.res.ResolveHash(ctx, hash)
	switch {
	case err == nil:
		return res
	case errors.Is(err, narindex.ErrNotFound), errors.Is(err, narindex.ErrRejected):
		if errors.Is(err, narindex.ErrRejected) && !errors.Is(err, narindex.ErrRemembered) {
			s.log.Info("narinfo refused", "hash", hash, "reason", err)
		}
		http.NotFound(w, r)
	default:
		s.log.Error("narinfo lookup failed", "hash", hash, "err", err)
		http.Error(w, "no substituter answered", http.StatusBadGateway)
	}
	return nil
}

// narinfo serves the accepted narinfo with its signed fields unchanged,
// pointing at this server's NAR route.
func (s *cacheServer) narinfo(w http.ResponseWriter, r *http.Request, hash string) {
	res := s.resolve(w, r, hash)
	if res == nil {
		return
	}
	ni := *res.Info
	ni.URL = "nar/" + hash + ".nar"
	ni.Compression = "none"
	ni.FileHash = ni.NarHash.String()
	ni.FileSize = ni.NarSize
	w.Header().Set("Content-Type", "text/x-nix-narinfo")
	w.Write(ni.Marshal())
}

// listing serves a listing only when its digest matched the signed one.
func (s *cacheServer) listing(w http.ResponseWriter, r *http.Request, hash string) {
	res := s.resolve(w, r, hash)
	if res == nil {
		return
	}
	if res.ListingData == nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(res.ListingData)
}

// holdBack is how much of a NAR's end is withheld until the whole NAR has
// matched NarHash: a client that gets a mismatching NAR gets it short.
const holdBack = 64 << 10

// nar streams a NAR from verified blocks. The last holdBack bytes go out
// only after the whole NAR matched NarHash; on a mismatch the connection
// is cut (the client sees a truncated body) and the path is refused from
// then on.
func (s *cacheServer) nar(w http.ResponseWriter, r *http.Request, hash string) {
	res := s.resolve(w, r, hash)
	if res == nil {
		return
	}
	info := res.Info
	c, err := cid.Decode(info.IpfsCid)
	if err != nil {
		s.refuse(hash, fmt.Errorf("IpfsCid %q: %v", info.IpfsCid, err))
		http.NotFound(w, r)
		return
	}
	octx, cancel := context.WithTimeout(r.Context(), s.readTimeout)
	f, err := fetch.OpenFile(octx, s.blocks.mem, c)
	cancel()
	if err == nil && f.Size() != int64(info.NarSize) {
		err = fmt.Errorf("%w: CID %s holds %d bytes but NarSize is %d", fetch.ErrMalformedDAG, c, f.Size(), info.NarSize)
	}
	if err != nil {
		if errors.Is(err, fetch.ErrMalformedDAG) {
			s.refuse(hash, err)
			http.NotFound(w, r)
			return
		}
		s.log.Error("opening NAR failed", "hash", hash, "err", err)
		http.Error(w, "blocks not available", http.StatusBadGateway)
		return
	}
	w.Header().Set("Content-Type", "application/x-nix-nar")
	if r.Header.Get("Range") != "" && res.CidSigned {
		// Every block is checked against a CID a trusted key signed.
		http.ServeContent(w, r, hash+".nar", time.Time{}, f.ReadSeeker(r.Context(), s.readTimeout))
		return
	}
	chk := integrity.New(info.NarHash, f.Size(), 0, s.ahead)
	f.SetLeafHook(chk.OnLeaf)
	w.Header().Set("Content-Length", strconv.FormatInt(f.Size(), 10))
	if r.Method == http.MethodHead {
		return
	}
	size := f.Size()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		n := min(int64(len(buf)), size-off)
		rctx, cancel := context.WithTimeout(r.Context(), s.readTimeout)
		m, err := f.ReadAt(rctx, buf[:n], off)
		cancel()
		if int64(m) < n {
			s.log.Error("reading NAR failed; response cut short", "hash", hash, "offset", off, "err", err)
			panic(http.ErrAbortHandler)
		}
		out := buf[:n]
		if off+n == size {
			// The whole NAR has streamed past the hasher: check it
			// before the last bytes go out.
			vctx, cancel := context.WithTimeout(r.Context(), s.readTimeout)
			_, verr := chk.Verify(vctx, f.ReadAt)
			cancel()
			if verr != nil {
				if errors.Is(verr, integrity.ErrQuarantined) {
					s.refuse(hash, verr)
					s.blocksEvict(f)
				} else {
					s.log.Error("checking NAR failed; response cut short", "hash", hash, "err", verr)
				}
				keep := max(0, int64(len(out))-holdBack)
				w.Write(out[:keep])
				panic(http.ErrAbortHandler)
			}
		}
		if _, err := w.Write(out); err != nil {
			return
		}
		off += n
	}
}

// refuse remembers that a path's NAR must not be served, and logs why.
func (s *cacheServer) refuse(hash string, why error) {
	s.mu.Lock()
	s.bad[hash] = why
	s.mu.Unlock()
	s.log.Error("store path refused", "hash", hash, "reason", why)
}

// blocksEvict drops a refused NAR's blocks from the caches.
func (s *cacheServer) blocksEvict(f *fetch.File) {
	for _, c := range f.KnownBlocks() {
		s.blocks.evict(c)
	}
}
