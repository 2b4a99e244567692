package publish

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ipnix/ipnix/internal/atomicfile"
	"github.com/ipnix/ipnix/narindex"
)

// Options configure a Publisher.
type Options struct {
	To        string              // binary cache directory to write
	SecretKey *narindex.SecretKey // when set: Sig and IpfsCidSig
	Progress  *Progress           // may be nil
	Log       *slog.Logger        // may be nil
	// MaxEntries refuses a store path of more entries (files,
	// directories, symlinks); 0 means narindex.MaxListingEntries.
	MaxEntries int
	// Streams is how many store paths stream into kubo at once; 0 means
	// 2.
	Streams int
}

// Publisher writes store paths into IPFS and a binary cache directory.
type Publisher struct {
	add  Adder
	opts Options
	log  *slog.Logger
	// encoding is the IpfsEncoding written into every narinfo, empty when
	// the Adder cannot describe its layout.
	encoding string
}

// Summary counts what a run did.
type Summary struct {
	Published int
	Skipped   int
	Bytes     uint64 // NAR bytes added to IPFS
}

// New returns a Publisher adding through add.
func New(add Adder, o Options) (*Publisher, error) {
	if o.To == "" {
		return nil, errors.New("no output directory (--to)")
	}
	if err := os.MkdirAll(filepath.Join(o.To, "nar"), 0o755); err != nil {
		return nil, fmt.Errorf("output directory: %w", err)
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sweepStaleTemps(o.To, time.Now(), log)
	p := &Publisher{add: add, opts: o, log: log}
	if d, ok := add.(Describer); ok {
		if e, ok := d.Encoding(); ok {
			p.encoding = e.String()
		} else {
			log.Info("the chunker is not fixed-size, which IpfsEncoding (RFC 133's draft) cannot describe: narinfos get no IpfsEncoding")
		}
	}
	return p, p.writeCacheInfo()
}

// writeCacheInfo writes nix-cache-info unless one is there.
func (p *Publisher) writeCacheInfo() error {
	path := filepath.Join(p.opts.To, "nix-cache-info")
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	return atomicfile.Write(path, []byte("StoreDir: "+narindex.StoreDir+"\nWantMassQuery: 1\nPriority: 40\n"), 0o644)
}

// published reports whether base's entry in the output is complete and
// current: its narinfo has a CID and the digest of the listing beside it,
// and, when the publisher signs, a CID signature (version 2) by its key.
// Anything less (such as an entry signed with the retired version 1) is
// published again.
func (p *Publisher) published(hashPart string) bool {
	data, err := os.ReadFile(filepath.Join(p.opts.To, hashPart+".narinfo"))
	if err != nil {
		return false
	}
	ni, err := narindex.ParseNarInfo(data)
	if err != nil || ni.IpfsCid == "" || ni.IpfsLsHash.IsZero() {
		return false
	}
	ls, err := os.ReadFile(filepath.Join(p.opts.To, hashPart+".ls"))
	if sum := sha256.Sum256(ls); err != nil || !bytes.Equal(sum[:], ni.IpfsLsHash.Digest) {
		return false
	}
	if k := p.opts.SecretKey; k != nil {
		return ni.VerifyCidSig([]narindex.PublicKey{k.Public()}) == nil
	}
	return true
}

// finish writes the listing and then, atomically, the narinfo, with the
// CID, the description of its DAG (IpfsEncoding, replacing any the source
// had), the digest of exactly the listing bytes written, and (with a key)
// both signatures.
func (p *Publisher) finish(sp narindex.StorePath, ni *narindex.NarInfo, in *ingested) error {
	oldCid, oldLsHash := ni.IpfsCid, ni.IpfsLsHash
	sum := sha256.Sum256(in.listing)
	ni.IpfsCid, ni.LegacyIPFSHash = in.cid.String(), false
	ni.IpfsEncoding = p.encoding
	ni.IpfsLsHash = narindex.SHA256(sum[:])
	if k := p.opts.SecretKey; k != nil {
		if err := ni.Sign(*k); err != nil {
			return fmt.Errorf("%s: signing: %w", sp, err)
		}
		if err := ni.SignCid(*k); err != nil {
			return fmt.Errorf("%s: signing CID: %w", sp, err)
		}
	} else if oldCid != ni.IpfsCid || !oldLsHash.Equal(ni.IpfsLsHash) {
		// A CID signature the source carried covers other values; kept,
		// it would only make clients reject the path.
		ni.IpfsCidSig = ""
	}
	if err := atomicfile.Write(filepath.Join(p.opts.To, sp.Hash+".ls"), in.listing, 0o644); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(p.opts.To, sp.Hash+".narinfo"), ni.Marshal(), 0o644); err != nil {
		return err
	}
	p.log.Debug("published", "path", sp.String(), "cid", ni.IpfsCid, "narSize", ni.NarSize)
	return nil
}

// cacheDir turns a --from argument (a directory or a file:// URL) into a
// directory path.
func cacheDir(from string) (string, error) {
	if strings.HasPrefix(from, "file://") {
		from = strings.TrimPrefix(from, "file://")
		if i := strings.IndexByte(from, '?'); i >= 0 {
			from = from[:i]
		}
	} else if strings.Contains(from, "://") {
		return "", fmt.Errorf("--from %q: only local binary caches (a directory or file:// URL) can be republished", from)
	}
	fi, err := os.Stat(from)
	if err != nil {
		return "", fmt.Errorf("--from: %w", err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("--from %s is not a directory", from)
	}
	return from, nil
}
