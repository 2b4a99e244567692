package narindex

import (
	"fmt"
	"strings"
)

// StoreDir is the only Nix store directory ipnix serves.
const StoreDir = "/nix/store"

const (
	storeHashLen    = 32  // nix32 characters of a store path's hash part
	maxStoreNameLen = 211 // longest name Nix accepts
)

// StorePath is a store path split into its hash part and its name.
type StorePath struct {
	Hash string // 32 nix32 characters
	Name string
}

// ParseStorePath parses a full store path, which must lie directly in
// StoreDir. Unlike Nix it does not canonicalise the path first: "//", "."
// and ".." components and trailing slashes are rejected, not removed.
func ParseStorePath(full string) (StorePath, error) {
	base, ok := strings.CutPrefix(full, StoreDir+"/")
	if !ok || strings.Contains(base, "/") {
		return StorePath{}, fmt.Errorf("path %q is not directly in the Nix store %s", full, StoreDir)
	}
	p, err := ParseStorePathBase(base)
	if err != nil {
		return StorePath{}, fmt.Errorf("path %q: %w", full, err)
	}
	return p, nil
}

// ParseStorePathBase parses a store path's base name,
// "<32 nix32 characters>-<name>", with Nix 2.8's rules for the name: 1 to
// 211 characters from [A-Za-z0-9+-._?=]. Nix 2.8 allows a name to start with
// "." (later Nix versions refuse "." and ".." as the first dash-separated
// component); so does this. Nix 2.8 does not check the dash after the hash,
// but every store path it makes has one, so this requires it.
func ParseStorePathBase(base string) (StorePath, error) {
	if len(base) < storeHashLen+2 {
		return StorePath{}, fmt.Errorf("%q is too short to be a valid store path", base)
	}
	hash, name := base[:storeHashLen], base[storeHashLen+1:]
	for i := 0; i < len(hash); i++ {
		if nix32Value[hash[i]] == 0xff {
			return StorePath{}, fmt.Errorf("store path %q contains illegal base-32 character %q", base, hash[i])
		}
	}
	if base[storeHashLen] != '-' {
		return StorePath{}, fmt.Errorf("store path %q has no '-' after its hash part", base)
	}
	if err := checkStoreName(name); err != nil {
		return StorePath{}, fmt.Errorf("store path %q: %v", base, err)
	}
	return StorePath{Hash: hash, Name: name}, nil
}

func checkStoreName(name string) error {
	if name == "" {
		return fmt.Errorf("empty name")
	}
	if len(name) > maxStoreNameLen {
		return fmt.Errorf("name longer than %d characters", maxStoreNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '+', c == '-', c == '.', c == '_', c == '?', c == '=':
		default:
			return fmt.Errorf("name contains illegal character %q", c)
		}
	}
	return nil
}

// Base gives "<hash>-<name>".
func (p StorePath) Base() string { return p.Hash + "-" + p.Name }

// String gives the full path in StoreDir.
func (p StorePath) String() string { return StoreDir + "/" + p.Base() }
