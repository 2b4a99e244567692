package integrity

import "github.com/ipnix/ipnix/narindex"

// ListingDiff returns the path of the first entry where a and b differ
// (type, size, NAR offset, executable bit, symlink target or the set of
// names), or "" when they are equal.
func ListingDiff(a, b *narindex.ListingNode) string {
	return listingDiff(a, b, "")
}

func listingDiff(a, b *narindex.ListingNode, path string) string {
	if a == nil || b == nil {
		if a == b {
			return ""
		}
		return "/" + path
	}
	if a.Type != b.Type || a.Executable != b.Executable || a.Target != b.Target ||
		a.Size != b.Size || a.NarOffset != b.NarOffset || len(a.Entries) != len(b.Entries) {
		return "/" + path
	}
	for name, ca := range a.Entries {
		cb, ok := b.Entries[name]
		if !ok {
			return "/" + joinName(path, name)
		}
		if p := listingDiff(ca, cb, joinName(path, name)); p != "" {
			return p
		}
	}
	return ""
}

func joinName(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}
