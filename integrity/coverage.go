package integrity

import "sort"

// coverage is the set of byte ranges of one file served so far, as sorted,
// disjoint, non-adjacent spans.
type coverage struct {
	spans []span
	done  bool
}

type span struct{ lo, hi int64 }

// add records [lo, hi) and reports whether [0, size) is now covered.
func (c *coverage) add(lo, hi, size int64) bool {
	i := sort.Search(len(c.spans), func(i int) bool { return c.spans[i].hi >= lo })
	j := i
	for j < len(c.spans) && c.spans[j].lo <= hi {
		lo, hi = min(lo, c.spans[j].lo), max(hi, c.spans[j].hi)
		j++
	}
	c.spans = append(c.spans[:i], append([]span{{lo, hi}}, c.spans[j:]...)...)
	if len(c.spans) == 1 && c.spans[0].lo <= 0 && c.spans[0].hi >= size {
		c.done = true
		c.spans = nil
	}
	return c.done
}
