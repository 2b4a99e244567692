package narindex

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// ErrRejected says that a narinfo was found but not accepted: wrong name,
// no valid signature, no CID, and so on. The error wrapping it says why.
var ErrRejected = errors.New("rejected")

// Resolver finds a store path's narinfo and listing in substituters, in
// order, and decides whether to accept it.
type Resolver struct {
	Substituters []Substituter
	TrustedKeys  []PublicKey
	// RequireSigs demands a Sig that verifies under a trusted key.
	RequireSigs bool
	// RequireCidSig demands an IpfsCidSig that verifies under a trusted key.
	// Without it an IpfsCidSig by a trusted key name is still checked, and
	// a bad one rejects the narinfo.
	RequireCidSig bool
}

// Resolved is an accepted narinfo with its listing.
type Resolved struct {
	Path        StorePath
	Info        *NarInfo
	ListingData []byte // raw .ls bytes; nil when the substituter has none
	From        string // URL of the substituter
	CidSigned   bool   // IpfsCidSig verified under a trusted key
}

// Resolve looks up a store path by base name. Substituters are asked in
// order; a narinfo that one of them has but that fails the checks is
// rejected and the next is asked, as Nix does when a signature is missing.
//
// The error wraps ErrNotFound when no substituter has the path (or base is
// not a store path name), and ErrRejected when some had it but none was
// acceptable. When a substituter failed (timeout, HTTP 500, corrupt
// narinfo) and none gave an acceptable answer, the error wraps neither, so
// that a passing failure is not taken for a definite absence.
func (r *Resolver) Resolve(ctx context.Context, base string) (*Resolved, error) {
	sp, err := ParseStorePathBase(base)
	if err != nil {
		return nil, fmt.Errorf("%w: %q is not a store path name: %v", ErrNotFound, base, err)
	}
	if len(r.Substituters) == 0 {
		return nil, fmt.Errorf("%s: %w: no substituters configured", base, ErrNotFound)
	}
	var failures, rejections []string
	for _, s := range r.Substituters {
		info, err := s.NarInfo(ctx, sp.Hash)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%s: %w", base, ctx.Err())
			}
			failures = append(failures, fmt.Sprintf("%s: %v", s.URL(), err))
			continue
		}
		cidSigned, err := r.accept(sp, info)
		if err != nil {
			rejections = append(rejections, fmt.Sprintf("%s: %v", s.URL(), err))
			continue
		}
		ls, err := s.Listing(ctx, sp.Hash)
		if errors.Is(err, ErrNotFound) {
			ls, err = nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: listing from %s: %w", base, s.URL(), err)
		}
		return &Resolved{Path: sp, Info: info, ListingData: ls, From: s.URL(), CidSigned: cidSigned}, nil
	}
	switch {
	case len(failures) > 0:
		msg := strings.Join(failures, "; ")
		if len(rejections) > 0 {
			msg += "; rejected: " + strings.Join(rejections, "; ")
		}
		return nil, fmt.Errorf("%s: no substituter answered: %s", base, msg)
	case len(rejections) > 0:
		return nil, fmt.Errorf("%s: %w: %s", base, ErrRejected, strings.Join(rejections, "; "))
	default:
		return nil, fmt.Errorf("%s: %w in any substituter", base, ErrNotFound)
	}
}

// accept checks a narinfo for sp against the resolver's policy and reports
// whether its CID signature verified.
func (r *Resolver) accept(sp StorePath, info *NarInfo) (bool, error) {
	if info.StorePath != sp.String() {
		return false, fmt.Errorf("narinfo is for %s", info.StorePath)
	}
	if info.NarHash.Algo != "sha256" {
		return false, fmt.Errorf("NarHash %s is not sha256", info.NarHash)
	}
	if r.RequireSigs {
		if err := info.VerifySigs(r.TrustedKeys); err != nil {
			return false, err
		}
	}
	if info.IpfsCid == "" {
		return false, fmt.Errorf("narinfo has no IpfsCid")
	}
	cidErr := info.VerifyCidSig(r.TrustedKeys)
	switch {
	case cidErr == nil:
		return true, nil
	case r.RequireCidSig:
		return false, cidErr
	case errors.Is(cidErr, ErrInvalidSignature):
		return false, cidErr
	}
	return false, nil
}
