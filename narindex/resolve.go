package narindex

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// ErrRejected says that a narinfo was found but not accepted: malformed,
// for another store path, no valid signature, no CID, and so on. The error
// wrapping it says why.
var ErrRejected = errors.New("rejected")

// ErrRemembered is wrapped, beside ErrRejected, by the error of a Resolve
// answered from the memory of an earlier rejection: its reason was
// reported then.
var ErrRemembered = errors.New("rejection remembered")

// DefaultRejectTTL is how long a Resolver remembers a rejected store path
// unless told otherwise.
const DefaultRejectTTL = 5 * time.Minute

const (
	maxRemembered    = 1 << 16 // store paths
	maxRememberedMsg = 1024    // bytes of each one's reason
)

// Resolver finds a store path's narinfo and listing in substituters, in
// order, and decides whether to accept it. Its fields are set before the
// first Resolve and not changed afterwards; Resolve may then be called
// concurrently. A Resolver must not be copied after its first use.
type Resolver struct {
	Substituters []Substituter
	TrustedKeys  []PublicKey
	// RequireSigs demands a Sig that verifies under a trusted key.
	RequireSigs bool
	// RequireCidSig demands an IpfsCidSig (version 2) that verifies under
	// a trusted key. Without it, a narinfo with no such signature is
	// accepted with CidSigned false, but one whose IpfsCidSig by a trusted
	// key name does not verify is still rejected.
	RequireCidSig bool
	// RejectTTL is how long a rejected store path is remembered, during
	// which Resolve answers the same rejection without asking the
	// substituters again. Zero means DefaultRejectTTL; negative disables
	// the memory. At most 65,536 store paths are remembered.
	RejectTTL time.Duration

	clock func() time.Time // for tests; time.Now when nil

	mu       sync.Mutex
	rejected *simplelru.LRU[string, rejection]
}

type rejection struct {
	msg   string
	until time.Time
}

// Resolved is an accepted narinfo with its listing.
type Resolved struct {
	Path StorePath
	Info *NarInfo
	From string // URL of the substituter
	// CidSigned: IpfsCidSig (version 2) verified under a trusted key, so
	// IpfsCid and IpfsLsHash are as trustworthy as the key.
	CidSigned bool
	// ListingData is the raw .ls, non-nil only when CidSigned and its
	// SHA-256 equals the signed IpfsLsHash. Otherwise it is nil and
	// ListingNote says why (for the log); a listing must then be built
	// from the NAR itself.
	ListingData []byte
	ListingNote string
}

// Resolve looks up a store path by base name. Substituters are asked in
// order; a narinfo that one of them has but that fails the checks is
// rejected and the next is asked, as Nix does when a signature is missing.
// The listing is fetched only when it can be trusted (see Resolved).
//
// The error wraps ErrNotFound when no substituter has the path (or base is
// not a store path name), and ErrRejected when some had it but none was
// acceptable (a narinfo that does not parse counts as a rejection). A
// rejection is remembered for RejectTTL; the error then also wraps
// ErrRemembered. When a substituter failed (timeout, HTTP 500) and none
// gave an acceptable answer, the error wraps neither, so that a passing
// failure is not taken for a definite absence.
func (r *Resolver) Resolve(ctx context.Context, base string) (*Resolved, error) {
	sp, err := ParseStorePathBase(base)
	if err != nil {
		return nil, fmt.Errorf("%w: %q is not a store path name: %v", ErrNotFound, base, err)
	}
	return r.resolve(ctx, sp, -1, nil)
}

// resolve is Resolve for sp; when known is not nil it is the narinfo that
// substituter number from has already given for sp's hash.
func (r *Resolver) resolve(ctx context.Context, sp StorePath, from int, known *NarInfo) (*Resolved, error) {
	base := sp.Base()
	if len(r.Substituters) == 0 {
		return nil, fmt.Errorf("%s: %w: no substituters configured", base, ErrNotFound)
	}
	if err := r.remembered(base); err != nil {
		return nil, err
	}
	var failures, rejections []string
	for i, s := range r.Substituters {
		info, err := known, error(nil)
		if i != from {
			info, err = s.NarInfo(ctx, sp.Hash)
		}
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%s: %w", base, ctx.Err())
			}
			if errors.Is(err, ErrMalformedNarInfo) || errors.Is(err, ErrRejected) {
				rejections = append(rejections, fmt.Sprintf("%s: %v", s.URL(), err))
			} else {
				failures = append(failures, fmt.Sprintf("%s: %v", s.URL(), err))
			}
			continue
		}
		cidSigned, note, err := r.accept(sp, info)
		if err != nil {
			rejections = append(rejections, fmt.Sprintf("%s: %v", s.URL(), err))
			continue
		}
		res := &Resolved{Path: sp, Info: info, From: s.URL(), CidSigned: cidSigned, ListingNote: note}
		if cidSigned && !info.IpfsLsHash.IsZero() {
			if err := r.listing(ctx, s, res); err != nil {
				return nil, fmt.Errorf("%s: listing from %s: %w", base, s.URL(), err)
			}
		}
		return res, nil
	}
	switch {
	case len(failures) > 0:
		msg := strings.Join(failures, "; ")
		if len(rejections) > 0 {
			msg += "; rejected: " + strings.Join(rejections, "; ")
		}
		return nil, fmt.Errorf("%s: no substituter answered: %s", base, msg)
	case len(rejections) > 0:
		err := fmt.Errorf("%s: %w: %s", base, ErrRejected, strings.Join(rejections, "; "))
		r.remember(base, err)
		return nil, err
	default:
		return nil, fmt.Errorf("%s: %w in any substituter", base, ErrNotFound)
	}
}

// accept checks a narinfo for sp against the resolver's policy and reports
// whether its CID signature verified; when it did not, note says why.
func (r *Resolver) accept(sp StorePath, info *NarInfo) (cidSigned bool, note string, err error) {
	if info.StorePath != sp.String() {
		return false, "", fmt.Errorf("narinfo is for %s", info.StorePath)
	}
	if info.NarHash.Algo != "sha256" {
		return false, "", fmt.Errorf("NarHash %s is not sha256", info.NarHash)
	}
	if r.RequireSigs {
		if err := info.VerifySigs(r.TrustedKeys); err != nil {
			return false, "", err
		}
	}
	if info.IpfsCid == "" {
		return false, "", fmt.Errorf("narinfo has no IpfsCid")
	}
	cidErr := info.VerifyCidSig(r.TrustedKeys)
	switch {
	case cidErr == nil:
		if info.IpfsLsHash.IsZero() {
			return true, "narinfo has no IpfsLsHash, so no listing can be trusted", nil
		}
		return true, "", nil
	case !errors.Is(cidErr, ErrNoSignature) && !errors.Is(cidErr, ErrUntrustedSigner) && !errors.Is(cidErr, ErrRetiredCidSig):
		// A trusted key's signature that does not verify, or a CID that
		// cannot be part of a fingerprint.
		return false, "", cidErr
	case r.RequireCidSig:
		return false, "", fmt.Errorf("%w; a trusted IpfsCidSig is required", cidErr)
	}
	return false, fmt.Sprintf("no trusted IpfsCidSig (%v), so no listing is trusted", cidErr), nil
}

// listing fetches the listing of a CID-signed narinfo with IpfsLsHash into
// res when its digest matches, and otherwise says why not in ListingNote.
// Only a failure to fetch it that may pass is an error.
func (r *Resolver) listing(ctx context.Context, s Substituter, res *Resolved) error {
	ls, err := s.Listing(ctx, res.Path.Hash)
	switch {
	case errors.Is(err, ErrNotFound):
		res.ListingNote = "substituter has no listing"
		return nil
	case errors.Is(err, errTooLarge):
		res.ListingNote = err.Error()
		return nil
	case err != nil && ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		return err
	}
	sum := sha256.Sum256(ls)
	if want := res.Info.IpfsLsHash; !bytes.Equal(sum[:], want.Digest) {
		res.ListingNote = fmt.Sprintf("listing has digest %s, not the signed IpfsLsHash %s", SHA256(sum[:]), want)
		return nil
	}
	res.ListingData = ls
	return nil
}

func (r *Resolver) ttl() time.Duration {
	if r.RejectTTL == 0 {
		return DefaultRejectTTL
	}
	return r.RejectTTL
}

func (r *Resolver) now() time.Time {
	if r.clock != nil {
		return r.clock()
	}
	return time.Now()
}

// RememberRejection records that the store path base was rejected for the
// reason err gives, as Resolve does with the narinfos it rejects, so that
// later calls of Resolve answer a rejection (wrapping ErrRejected and
// ErrRemembered) for RejectTTL without asking the substituters. It is for
// callers that reject a path for what they find beyond the narinfo (a CID
// that does not decode, a NAR of the wrong size, a malformed NAR).
func (r *Resolver) RememberRejection(base string, err error) { r.remember(base, err) }

// remember records a rejection of base, with a bounded copy of its
// reason.
func (r *Resolver) remember(base string, err error) {
	ttl := r.ttl()
	if ttl < 0 {
		return
	}
	msg := err.Error()
	if len(msg) > maxRememberedMsg {
		msg = msg[:maxRememberedMsg] + "..."
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rejected == nil {
		r.rejected, _ = simplelru.NewLRU[string, rejection](maxRemembered, nil)
	}
	r.rejected.Add(base, rejection{msg: msg, until: r.now().Add(ttl)})
}

// remembered gives the remembered rejection of base, if any.
func (r *Resolver) remembered(base string) error {
	if r.ttl() < 0 {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rejected == nil {
		return nil
	}
	rej, ok := r.rejected.Get(base)
	if !ok {
		return nil
	}
	left := rej.until.Sub(r.now())
	if left <= 0 {
		r.rejected.Remove(base)
		return nil
	}
	return &rememberedError{msg: fmt.Sprintf("%s (rejection remembered; asked again in %v)", rej.msg, left.Round(time.Second))}
}

// rememberedError is a rejection answered from memory.
type rememberedError struct{ msg string }

func (e *rememberedError) Error() string   { return e.msg }
func (e *rememberedError) Unwrap() []error { return []error{ErrRejected, ErrRemembered} }

// ResolveHash is Resolve for a store path known only by its hash part, as
// a binary-cache client asks for "<hash>.narinfo": the name comes from the
// first substituter whose narinfo for the hash names a store path with that
// hash, and that path is then resolved as usual.
func (r *Resolver) ResolveHash(ctx context.Context, hash string) (*Resolved, error) {
	if len(hash) != storeHashLen {
		return nil, fmt.Errorf("%w: %q is not a store path hash", ErrNotFound, hash)
	}
	if _, err := DecodeNix32(hash); err != nil {
		return nil, fmt.Errorf("%w: %q is not a store path hash: %v", ErrNotFound, hash, err)
	}
	var failures []string
	for i, s := range r.Substituters {
		info, err := s.NarInfo(ctx, hash)
		if err != nil {
			if !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrRejected) && !errors.Is(err, ErrMalformedNarInfo) {
				failures = append(failures, fmt.Sprintf("%s: %v", s.URL(), err))
			}
			continue
		}
		if sp, err := ParseStorePath(info.StorePath); err == nil && sp.Hash == hash {
			// The narinfo just fetched is not fetched again.
			return r.resolve(ctx, sp, i, info)
		}
	}
	if len(failures) > 0 { // a passing failure is not a definite absence
		return nil, fmt.Errorf("%s: no substituter answered: %s", hash, strings.Join(failures, "; "))
	}
	return nil, fmt.Errorf("%s: %w in any substituter", hash, ErrNotFound)
}
