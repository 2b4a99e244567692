package main

import (
	"math"
	"strings"
	"testing"
)

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median of nothing is not NaN")
	}
}

// The ratio is of the two medians, not the median of the rounds' ratios,
// and every round's ratio is kept.
func TestRatioOfMedians(t *testing.T) {
	r := &row{Ipnix: figure{Unit: "MiB/s"}, Baseline: &figure{Unit: "MiB/s"}, meets: func(r *row) bool { return r.Ratio >= 0.8 }}
	for _, v := range [][2]float64{{100, 100}, {300, 200}, {200, 1000}} {
		r.ipnix(v[0])
		r.base(v[1])
	}
	r.finish()
	if r.Ipnix.Median != 200 || r.Baseline.Median != 200 || r.Ratio != 1 {
		t.Fatalf("medians %v/%v ratio %v, want 200/200 and 1", r.Ipnix.Median, r.Baseline.Median, r.Ratio)
	}
	if want := []float64{1, 1.5, 0.2}; len(r.Rounds) != 3 || r.Rounds[0] != want[0] || r.Rounds[1] != want[1] || r.Rounds[2] != want[2] {
		t.Fatalf("round ratios %v, want %v", r.Rounds, want)
	}
	if r.Ipnix.Min != 100 || r.Ipnix.Max != 300 || r.Met == nil || !*r.Met {
		t.Fatalf("min %v max %v met %v", r.Ipnix.Min, r.Ipnix.Max, r.Met)
	}
	inv := &row{Ipnix: figure{Unit: "s"}, Baseline: &figure{Unit: "s"}, Invert: true}
	inv.ipnix(0.5)
	inv.base(4)
	inv.finish()
	if inv.Ratio != 8 {
		t.Fatalf("inverted ratio %v, want 8", inv.Ratio)
	}
}

func TestFigureString(t *testing.T) {
	f := &figure{Label: "native", Unit: "MiB/s", Rounds: []float64{700, 800, 750}}
	f.summarise()
	if got, want := f.String(), "native 750 MiB/s (700–800 MiB/s)"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
}

func TestTableCellsStayInTheirColumns(t *testing.T) {
	var sb strings.Builder
	r := &row{ID: "B1", What: "a | b\nc", Ipnix: figure{Unit: "s", Rounds: []float64{1}}, Target: "n/a"}
	r.finish()
	printTable(&sb, &machine{Date: "2026-01-01"}, []*row{r}, 1)
	for _, line := range strings.Split(sb.String(), "\n") {
		if strings.HasPrefix(line, "| B1") && strings.Count(line, "|")-strings.Count(line, `\|`) != 8 {
			t.Fatalf("row has the wrong number of columns: %s", line)
		}
	}
}

func TestParseOnly(t *testing.T) {
	sel, err := parseOnly(" b1, B8 ,")
	if err != nil || len(sel) != 2 || !sel["B1"] || !sel["B8"] {
		t.Fatalf("%v %v", sel, err)
	}
	if sel, err := parseOnly(""); sel != nil || err != nil {
		t.Fatalf("empty: %v %v", sel, err)
	}
	for _, bad := range []string{"B99", "B1,X", ",", "B6"} {
		if _, err := parseOnly(bad); err == nil {
			t.Errorf("--only %q accepted", bad)
		}
	}
	if _, err := parseOnly("B6,B1"); err != nil {
		t.Error(err)
	}
}

func FuzzParseOnly(f *testing.F) {
	f.Add("B1,B8")
	f.Add("b10, b6")
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := parseOnly(s)
		if err != nil {
			return
		}
		known := map[string]bool{"B6": true}
		for _, c := range cases {
			known[c.id] = true
		}
		for id := range sel {
			if !known[id] {
				t.Fatalf("%q selects unknown case %q", s, id)
			}
		}
	})
}

func TestMountSourceIn(t *testing.T) {
	info := `22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 0:26 / /tmp rw - tmpfs tmpfs rw
31 22 0:27 / /mnt/my\040disk rw - xfs /dev/sdb1 rw
32 22 0:28 / /nix/store rw shared:1 - btrfs /dev/sdc rw
`
	for path, want := range map[string]string{
		"/nix/store/abc": "/dev/sdc",
		"/nix/storex":    "/dev/vda",
		"/tmp/x":         "tmpfs",
		"/mnt/my disk/a": "/dev/sdb1",
		"/":              "/dev/vda",
	} {
		if got := mountSourceIn(info, path); got != want {
			t.Errorf("%s: %q, want %q", path, got, want)
		}
	}
}

func FuzzMountSourceIn(f *testing.F) {
	f.Add("22 1 254:0 / / rw - ext4 /dev/vda rw\n", "/a")
	f.Add(`1 2 3 / /a\04 x - y z`, "/a")
	f.Fuzz(func(t *testing.T, info, path string) {
		_ = mountSourceIn(info, path)
		_ = unescapeMountinfo(info)
	})
}
