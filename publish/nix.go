package publish

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"

	"github.com/ipnix/ipnix/narindex"
)

// PathInfo is what the local Nix database knows of a valid store path.
type PathInfo struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references"`
	Deriver    string   `json:"deriver"`
	CA         string   `json:"ca"`
	Signatures []string `json:"signatures"`
	Valid      *bool    `json:"valid"`
}

// QueryPathInfo asks the local Nix store about paths (and, with closure,
// everything they reference). It runs `nix path-info --json`, which every
// Nix since 2.4 has.
func QueryPathInfo(ctx context.Context, paths []string, closure bool) ([]PathInfo, error) {
	args := []string{"--extra-experimental-features", "nix-command", "path-info", "--json"}
	if closure {
		args = append(args, "--recursive")
	}
	args = append(args, "--")
	args = append(args, paths...)
	cmd := exec.CommandContext(ctx, "nix", args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if _, lookErr := exec.LookPath("nix"); lookErr != nil {
			return nil, fmt.Errorf("publishing store paths needs Nix: %v", lookErr)
		}
		return nil, fmt.Errorf("nix path-info: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	var infos []PathInfo
	if err := json.Unmarshal(out, &infos); err != nil {
		return nil, fmt.Errorf("nix path-info printed unexpected JSON: %v", err)
	}
	for _, pi := range infos {
		if pi.Valid != nil && !*pi.Valid {
			return nil, fmt.Errorf("%s is not a valid path in the local Nix store", pi.Path)
		}
		if _, err := narindex.ParseStorePath(pi.Path); err != nil {
			return nil, err
		}
	}
	return infos, nil
}

// narInfo builds the narinfo of a local store path, without URL or CID.
func (pi *PathInfo) narInfo() (*narindex.NarInfo, error) {
	h, err := narindex.ParseHash(pi.NarHash)
	if err != nil {
		return nil, fmt.Errorf("%s: NarHash from Nix: %w", pi.Path, err)
	}
	ni := &narindex.NarInfo{
		StorePath: pi.Path,
		NarHash:   h,
		NarSize:   pi.NarSize,
		CA:        pi.CA,
		Sigs:      append([]string(nil), pi.Signatures...),
	}
	for _, r := range pi.References {
		sp, err := narindex.ParseStorePath(r)
		if err != nil {
			return nil, err
		}
		ni.References = append(ni.References, sp.Base())
	}
	if pi.Deriver != "" {
		sp, err := narindex.ParseStorePath(pi.Deriver)
		if err != nil {
			return nil, err
		}
		ni.Deriver = sp.Base()
	}
	return ni, nil
}
