package narindex

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrNotFound says that a substituter (or every substituter) does not have
// what was asked for.
var ErrNotFound = errors.New("not found")

// Size limits of what substituters return.
const (
	maxCacheInfoSize = 64 << 10
	MaxListingSize   = 64 << 20
)

// CacheInfo is a binary cache's nix-cache-info file.
type CacheInfo struct {
	StoreDir      string
	WantMassQuery bool
	Priority      int
}

// Substituter is a Nix binary cache, read-only.
type Substituter interface {
	// URL names the cache, for messages and Resolved.From.
	URL() string
	// CacheInfo reads nix-cache-info; a cache for a store directory other
	// than StoreDir is an error.
	CacheInfo(ctx context.Context) (*CacheInfo, error)
	// NarInfo fetches and parses <hashPart>.narinfo. The error wraps
	// ErrNotFound when the cache does not have it, ErrMalformedNarInfo
	// when what it has is not a narinfo (or over MaxNarInfoSize), and
	// ErrRejected when it describes a store path of another hash.
	NarInfo(ctx context.Context, hashPart string) (*NarInfo, error)
	// Listing fetches the raw bytes of <hashPart>.ls, or ErrNotFound.
	Listing(ctx context.Context, hashPart string) ([]byte, error)
}

// SubstituterOptions tune OpenSubstituter. Zero values mean defaults.
type SubstituterOptions struct {
	Timeout     time.Duration // per request; default 20s
	NegativeTTL time.Duration // how long "not found" is remembered; default 60s
	Client      *http.Client  // for http(s); default http.DefaultClient
}

const (
	defaultTimeout     = 20 * time.Second
	defaultNegativeTTL = 60 * time.Second
	maxNegativeEntries = 10000
)

// OpenSubstituter opens a binary cache by URL: file:///dir or
// http(s)://host/prefix. A query string (Nix store settings such as
// ?compression=none) is ignored.
func OpenSubstituter(rawurl string, opts SubstituterOptions) (Substituter, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = defaultTimeout
	}
	if opts.NegativeTTL <= 0 {
		opts.NegativeTTL = defaultNegativeTTL
	}
	if opts.Client == nil {
		opts.Client = http.DefaultClient
	}
	u, err := url.Parse(rawurl)
	if err != nil {
		return nil, fmt.Errorf("substituter %q: %v", rawurl, err)
	}
	u.RawQuery, u.Fragment = "", ""
	var f fetcher
	switch u.Scheme {
	case "file":
		if (u.Host != "" && u.Host != "localhost") || !strings.HasPrefix(u.Path, "/") {
			return nil, fmt.Errorf("substituter %q: a file URL must name an absolute directory, as file:///dir", rawurl)
		}
		u.Host = ""
		f = fileFetcher{dir: u.Path}
	case "http", "https":
		if u.Host == "" {
			return nil, fmt.Errorf("substituter %q: no host", rawurl)
		}
		u.Path = strings.TrimRight(u.Path, "/")
		u.RawPath = ""
		f = &httpFetcher{base: u.String(), client: opts.Client, timeout: opts.Timeout}
	default:
		return nil, fmt.Errorf("substituter %q: unsupported scheme %q (want file, http or https)", rawurl, u.Scheme)
	}
	return &substituter{url: u.String(), f: f, neg: newNegCache(opts.NegativeTTL, maxNegativeEntries)}, nil
}

// fetcher reads one file of a binary cache. It returns an error wrapping
// ErrNotFound when the file is absent, and an error when it is larger than
// limit bytes.
type fetcher interface {
	fetch(ctx context.Context, name string, limit int64) ([]byte, error)
}

// substituter holds what file and HTTP caches share: name checks, parsing,
// and the memory of negative answers.
type substituter struct {
	url string
	f   fetcher
	neg *negCache

	mu   sync.Mutex
	info *CacheInfo // once read successfully
}

func (s *substituter) URL() string { return s.url }

func (s *substituter) CacheInfo(ctx context.Context) (*CacheInfo, error) {
	s.mu.Lock()
	info := s.info
	s.mu.Unlock()
	if info != nil {
		c := *info
		return &c, nil
	}
	data, err := s.f.fetch(ctx, "nix-cache-info", maxCacheInfoSize)
	if err != nil {
		return nil, err
	}
	info, err = ParseCacheInfo(data)
	if err != nil {
		return nil, fmt.Errorf("%s/nix-cache-info: %w", s.url, err)
	}
	s.mu.Lock()
	s.info = info
	s.mu.Unlock()
	c := *info
	return &c, nil
}

// ParseCacheInfo reads nix-cache-info as Nix does: "Key: value" lines,
// unknown keys ignored, StoreDir (when given) must be exactly StoreDir
// once surrounding white space is trimmed.
func ParseCacheInfo(data []byte) (*CacheInfo, error) {
	info := &CacheInfo{StoreDir: StoreDir, Priority: 50}
	for _, line := range bytes.Split(data, []byte{'\n'}) {
		key, value, ok := strings.Cut(string(line), ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch key {
		case "StoreDir":
			if value != StoreDir {
				return nil, fmt.Errorf("cache is for store directory %q, not %s", value, StoreDir)
			}
		case "WantMassQuery":
			info.WantMassQuery = value == "1"
		case "Priority":
			p, err := strconv.Atoi(value)
			if err != nil {
				return nil, fmt.Errorf("priority %q is not a number", value)
			}
			info.Priority = p
		}
	}
	return info, nil
}

func checkHashPart(h string) error {
	if len(h) != storeHashLen {
		return fmt.Errorf("%q is not a store path hash part", h)
	}
	for i := 0; i < len(h); i++ {
		if nix32Value[h[i]] == 0xff {
			return fmt.Errorf("%q is not a store path hash part", h)
		}
	}
	return nil
}

func (s *substituter) NarInfo(ctx context.Context, hashPart string) (*NarInfo, error) {
	if err := checkHashPart(hashPart); err != nil {
		return nil, err
	}
	data, err := s.get(ctx, hashPart+".narinfo", MaxNarInfoSize)
	if errors.Is(err, errTooLarge) {
		return nil, tag(ErrMalformedNarInfo, err)
	}
	if err != nil {
		return nil, err
	}
	n, err := ParseNarInfo(data)
	if err != nil {
		return nil, fmt.Errorf("%s/%s.narinfo: %w", s.url, hashPart, err)
	}
	if p, _ := n.Path(); p.Hash != hashPart {
		return nil, tag(ErrRejected, fmt.Errorf("%s/%s.narinfo describes %s, not a path with hash %s", s.url, hashPart, n.StorePath, hashPart))
	}
	return n, nil
}

func (s *substituter) Listing(ctx context.Context, hashPart string) ([]byte, error) {
	if err := checkHashPart(hashPart); err != nil {
		return nil, err
	}
	return s.get(ctx, hashPart+".ls", MaxListingSize)
}

// get fetches name, answering from and feeding the negative cache. Errors
// other than "not found" are never remembered.
func (s *substituter) get(ctx context.Context, name string, limit int64) ([]byte, error) {
	if s.neg.has(name) {
		return nil, fmt.Errorf("%s/%s: %w (remembered)", s.url, name, ErrNotFound)
	}
	data, err := s.f.fetch(ctx, name, limit)
	if errors.Is(err, ErrNotFound) {
		s.neg.add(name)
	}
	return data, err
}

// negCache remembers names that were not found, for ttl, and at most max
// of them.
type negCache struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu sync.Mutex
	m  map[string]time.Time // name -> expiry
}

func newNegCache(ttl time.Duration, max int) *negCache {
	return &negCache{ttl: ttl, max: max, now: time.Now, m: make(map[string]time.Time)}
}

func (c *negCache) has(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	exp, ok := c.m[name]
	if ok && !c.now().Before(exp) {
		delete(c.m, name)
		ok = false
	}
	return ok
}

func (c *negCache) add(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if len(c.m) >= c.max {
		for k, exp := range c.m {
			if !now.Before(exp) {
				delete(c.m, k)
			}
		}
		// Still full: forget arbitrary entries; forgetting only costs a
		// repeated request.
		for k := range c.m {
			if len(c.m) < c.max {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[name] = now.Add(c.ttl)
}
