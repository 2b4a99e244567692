package publish

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// Progress reports a publish run: a live line on a terminal, a summary line
// otherwise. A nil *Progress reports nothing.
type Progress struct {
	w        io.Writer
	terminal bool

	mu                         sync.Mutex
	start                      time.Time
	total, done, skipped, pubN int
	bytes                      uint64
	current                    string
	lastDraw                   time.Time
}

// NewProgress reports to w; terminal selects the live line.
func NewProgress(w io.Writer, terminal bool) *Progress {
	return &Progress{w: w, terminal: terminal}
}

// Start begins a run of n items.
func (p *Progress) Start(n int) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.start, p.total = time.Now(), n
}

// Item announces the item being worked on, of size NAR bytes (0: not
// known yet).
func (p *Progress) Item(name string, size uint64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.current = name
	if size > 0 {
		p.current = fmt.Sprintf("%s (%s)", name, HumanBytes(size))
	}
	p.draw(false)
}

// Skipped records an item already published.
func (p *Progress) Skipped() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done++
	p.skipped++
}

// Finished records a published item of size NAR bytes.
func (p *Progress) Finished(size uint64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done++
	p.pubN++
	p.bytes += size
	p.draw(false)
}

// Done ends the run with a summary line.
func (p *Progress) Done() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.terminal {
		fmt.Fprint(p.w, "\r\033[K")
	}
	el := time.Since(p.start)
	rate := float64(p.bytes) / max(el.Seconds(), 1e-3)
	fmt.Fprintf(p.w, "published %d store paths (%s of NAR, %s/s), %d already published, in %.1fs\n",
		p.pubN, HumanBytes(p.bytes), HumanBytes(uint64(rate)), p.skipped, el.Seconds())
}

func (p *Progress) draw(force bool) {
	if !p.terminal || (!force && time.Since(p.lastDraw) < 100*time.Millisecond) {
		return
	}
	p.lastDraw = time.Now()
	fmt.Fprintf(p.w, "\r\033[K[%d/%d] %s", p.done, p.total, p.current)
}

// HumanBytes formats n with binary units.
func HumanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
