package main

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"

	"github.com/dustin/go-humanize"
)

// figure is one quantity measured once per round.
type figure struct {
	Label  string    `json:"label,omitempty"`
	Unit   string    `json:"unit"` // MiB/s, s, B, B/B, %, x
	Rounds []float64 `json:"rounds"`
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
}

// row is one line of the table: ipnix against a baseline, each measured
// in every round, the ratio taken between the two medians.
type row struct {
	ID       string    `json:"id"`
	What     string    `json:"what"`
	Ipnix    figure    `json:"ipnix"`
	Baseline *figure   `json:"baseline,omitempty"`
	Invert   bool      `json:"-"` // the ratio is baseline/ipnix
	RatioOf  string    `json:"ratio_of,omitempty"`
	Ratio    float64   `json:"ratio"`        // of the medians
	Rounds   []float64 `json:"round_ratios"` // each round's own ratio
	Target   string    `json:"target"`
	Met      *bool     `json:"met,omitempty"`
	Extras   []*figure `json:"extras,omitempty"`
	Note     string    `json:"note,omitempty"`
	// meets decides Met once the medians are known; nil leaves it unset.
	meets func(*row) bool
	// post adds to the note what can only be said from the medians.
	post func(*row) string
}

func (r *row) ipnix(v float64) { r.Ipnix.Rounds = append(r.Ipnix.Rounds, v) }
func (r *row) base(v float64)  { r.Baseline.Rounds = append(r.Baseline.Rounds, v) }

// extra records v in the row's extra figure named label, made on first use.
func (r *row) extra(label, unit string, v float64) {
	for _, e := range r.Extras {
		if e.Label == label {
			e.Rounds = append(e.Rounds, v)
			return
		}
	}
	r.Extras = append(r.Extras, &figure{Label: label, Unit: unit, Rounds: []float64{v}})
}

// extraMedian is the median of the extra figure named label, or NaN.
func (r *row) extraMedian(label string) float64 {
	for _, e := range r.Extras {
		if e.Label == label {
			return median(e.Rounds)
		}
	}
	return math.NaN()
}

func (r *row) note(s string) {
	if r.Note != "" {
		r.Note += "; "
	}
	r.Note += s
}

// finish computes medians, ratios and Met.
func (r *row) finish() {
	r.Ipnix.summarise()
	if r.Baseline != nil {
		r.Baseline.summarise()
		r.Ratio = r.ratio(r.Ipnix.Median, r.Baseline.Median)
		r.Rounds = nil
		for i := range min(len(r.Ipnix.Rounds), len(r.Baseline.Rounds)) {
			r.Rounds = append(r.Rounds, r.ratio(r.Ipnix.Rounds[i], r.Baseline.Rounds[i]))
		}
	}
	for _, e := range r.Extras {
		e.summarise()
	}
	if len(r.Ipnix.Rounds) == 0 {
		return
	}
	if r.meets != nil {
		r.Met = boolp(r.meets(r))
	}
	if r.post != nil {
		if s := r.post(r); s != "" {
			r.note(s)
		}
	}
}

func (r *row) ratio(ipnix, base float64) float64 {
	if r.Invert {
		ipnix, base = base, ipnix
	}
	if base == 0 {
		return math.NaN()
	}
	return ipnix / base
}

func (f *figure) summarise() {
	if len(f.Rounds) == 0 {
		f.Median, f.Min, f.Max = math.NaN(), math.NaN(), math.NaN()
		return
	}
	f.Median = median(f.Rounds)
	f.Min, f.Max = f.Rounds[0], f.Rounds[0]
	for _, v := range f.Rounds {
		f.Min, f.Max = min(f.Min, v), max(f.Max, v)
	}
}

// median of vs (the mean of the middle two for an even count).
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// format gives v in unit, compactly.
func format(v float64, unit string) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	switch unit {
	case "MiB/s":
		return fmt.Sprintf("%.0f MiB/s", v)
	case "s":
		return fmt.Sprintf("%.2fs", v)
	case "B":
		return humanize.IBytes(uint64(max(v, 0)))
	case "B/B":
		return fmt.Sprintf("%.2f B/B", v)
	case "%":
		return fmt.Sprintf("%.1f %%", v)
	case "x":
		return fmt.Sprintf("%.2f×", v)
	case "n":
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%g %s", v, unit)
}

// String is "median (min–max)", or the single value of one round.
func (f *figure) String() string {
	if len(f.Rounds) == 0 {
		return "n/a"
	}
	s := format(f.Median, f.Unit)
	if len(f.Rounds) > 1 {
		s += " (" + strings.TrimSuffix(format(f.Min, f.Unit), " "+f.Unit) + "–" + format(f.Max, f.Unit) + ")"
	}
	if f.Label != "" {
		s = f.Label + " " + s
	}
	return s
}

// printTable writes the markdown table for the README.
func printTable(w io.Writer, m *machine, rows []*row, rounds int) {
	fmt.Fprintf(w, "ipnix benchmark, %s; %s\n\n", m.Date, m.header())
	fmt.Fprintf(w, "Each figure: median (min–max) of %d round(s), ipnix and baseline alternating (order reversed every other round); ratios are of the medians; caches dropped before every cold side.\n", rounds)
	for _, warn := range m.Warnings {
		fmt.Fprintf(w, "\n**WARNING: %s**\n", warn)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| | measure | ipnix | baseline | ratio | target | met |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, r := range rows {
		met := "n/a"
		if r.Met != nil {
			met = map[bool]string{true: "yes", false: "**no**"}[*r.Met]
		}
		ratio, base := "n/a", "—"
		if r.Baseline != nil {
			base = r.Baseline.String()
			if !math.IsNaN(r.Ratio) && len(r.Ipnix.Rounds) > 0 {
				ratio = fmt.Sprintf("%.2f× (%s)", r.Ratio, r.RatioOf)
			}
		}
		what := r.What
		var notes []string
		for _, e := range r.Extras {
			notes = append(notes, e.String())
		}
		if r.Note != "" {
			notes = append(notes, r.Note)
		}
		if len(notes) > 0 {
			what += " — " + strings.Join(notes, "; ")
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", r.ID, cell(what), cell(r.Ipnix.String()), cell(base), ratio, r.Target, met)
	}
}

// cell keeps a table cell on one line and free of column breaks.
func cell(s string) string {
	return strings.NewReplacer("|", "\\|", "\n", " ").Replace(s)
}
